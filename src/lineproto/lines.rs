//! Whole lines of a write body: halves to bisect a refused batch with,
//! the body without the lines InfluxDB named, and their count.
//!
//! A line here is what ends in `\n`; nothing is parsed, so these never
//! fail and never allocate more than the body.

/// `data` without the lines at the given indices.
pub fn without_lines(data: &[u8], bad: &[(usize, String)]) -> Vec<u8> {
    let bad: std::collections::BTreeSet<usize> = bad.iter().map(|(i, _)| *i).collect();
    data.split_inclusive(|&b| b == b'\n')
        .enumerate()
        .filter(|(i, _)| !bad.contains(i))
        .flat_map(|(_, line)| line.iter().copied())
        .collect()
}

/// Splits whole lines into two halves of about equal size.
pub fn split_lines(data: &[u8]) -> (&[u8], &[u8]) {
    let middle = data.len() / 2;
    let cut = data[middle..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| middle + i + 1)
        .filter(|&c| c < data.len())
        .or_else(|| {
            data[..middle]
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1)
        })
        .unwrap_or(data.len());
    data.split_at(cut)
}

/// How many lines `data` holds (each ends in `\n`).
pub fn count_lines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_split_at_line_boundaries() {
        let data = b"a 1\nbb 2\nccc 3\nd 4\n";
        let (x, y) = split_lines(data);
        assert_eq!([x, y].concat(), data);
        assert!(x.ends_with(b"\n") && !x.is_empty() && !y.is_empty());
        assert_eq!(count_lines(x) + count_lines(y), 4);
        // A long last line still leaves two non-empty halves.
        let data = b"a 1\nb 2\nlonglonglonglonglonglonglonglong 3\n";
        let (x, y) = split_lines(data);
        assert_eq!((count_lines(x), count_lines(y)), (2, 1));
    }

    #[test]
    fn refused_lines_are_taken_out_in_order() {
        let data = b"a 1\nb 2\nc 3\nd 4\n";
        let bad = [(1, String::new()), (3, String::new()), (1, String::new())];
        assert_eq!(without_lines(data, &bad), b"a 1\nc 3\n");
        assert_eq!(without_lines(data, &[]), data);
    }
}
