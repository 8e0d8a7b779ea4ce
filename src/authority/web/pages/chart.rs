//! A small line chart as inline SVG: a few series over time, drawn from
//! plain numbers. No script and no style attribute (the page's
//! Content-Security-Policy allows neither inline); presentation
//! attributes only.

use std::fmt::Write as _;

/// One line of the chart: its CSS class (the legend's colour) and its
/// stroke colour, and (time in ms, value) points, oldest first.
pub struct Series<'a> {
    pub label: &'a str,
    pub class: &'a str,
    pub colour: &'a str,
    pub points: Vec<(i64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
/// Room for the axis labels.
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 18.0;

/// The chart, with `id` on its element and a legend above it; a short
/// sentence instead when there is nothing to draw.
pub fn line_chart(id: &str, title: &str, series: &[Series<'_>], now_ms: i64) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter());
    let Some(first) = all().map(|p| p.0).min() else {
        return format!("<p id=\"{id}\">No reports in the history yet.</p>");
    };
    let last = all().map(|p| p.0).max().unwrap_or(first).max(first + 1);
    let top = all()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top <= 0.0 { 1.0 } else { top * 1.1 };
    let x = |t: i64| LEFT + (t - first) as f64 / (last - first) as f64 * (WIDTH - LEFT - 4.0);
    let y = |v: f64| (HEIGHT - BOTTOM) - v.clamp(0.0, top) / top * (HEIGHT - BOTTOM - 6.0);
    let mut svg = format!(
        "<svg id=\"{id}\" role=img aria-label=\"{label}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\" font-family=\"sans-serif\">",
        label = super::esc(title)
    );
    // Axes and the scale's two ends.
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{WIDTH}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{LEFT}\" y1=\"4\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"{lx}\" y=\"12\" text-anchor=\"end\">{}</text>\
         <text x=\"{lx}\" y=\"{b}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{HEIGHT}\" dy=\"-2\">{}</text>\
         <text x=\"{WIDTH}\" y=\"{HEIGHT}\" dy=\"-2\" text-anchor=\"end\">{}</text>",
        short(top),
        super::esc(&crate::render::relative(first, now_ms)),
        super::esc(&crate::render::relative(last, now_ms)),
        b = HEIGHT - BOTTOM,
        lx = LEFT - 4.0,
    );
    for s in series {
        let mut points = String::new();
        for &(t, v) in &s.points {
            if v.is_finite() {
                let _ = write!(points, "{:.1},{:.1} ", x(t), y(v));
            }
        }
        let _ = write!(
            svg,
            "<polyline class=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
            s.class,
            s.colour,
            points.trim_end()
        );
    }
    svg.push_str("</svg>");
    let mut legend = String::from("<div class=legend>");
    for s in series {
        let _ = write!(
            legend,
            "<span class=\"{}\">&#9632; {}</span>",
            s.class,
            super::esc(s.label)
        );
    }
    legend.push_str("</div>");
    format!(
        "<figure class=chart><figcaption>{}</figcaption>{legend}{svg}</figure>",
        super::esc(title)
    )
}

/// A scale's top as a short number: 1.2k, 35, 0.5.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_series_is_a_polyline_inside_the_chart_and_nothing_to_draw_says_so() {
        let s = Series {
            label: "in",
            class: "l-in",
            colour: "#000",
            points: vec![(0, 0.0), (1000, 5.0), (2000, 10.0), (3000, f64::NAN)],
        };
        let svg = line_chart("c", "Rates", &[s], 3000);
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let xy: Vec<(f64, f64)> = points
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(xy.len(), 3, "the NaN is left out: {points}");
        assert!(
            xy.iter()
                .all(|&(x, y)| (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y))
        );
        assert!(xy[0].0 < xy[1].0 && xy[1].0 < xy[2].0, "time runs right");
        assert!(xy[0].1 > xy[2].1, "larger values are higher: {points}");
        assert!(!svg.contains("style="), "the CSP allows no inline style");
        assert!(line_chart("c", "Rates", &[], 0).contains("No reports"));
    }
}
