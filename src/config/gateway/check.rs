//! Checks of single values the gateway's configuration and its commands
//! share: broker URLs, HTTP URLs and MQTT topic filters. Pure functions
//! that say what is wrong in words an operator can act on.

use crate::config::BrokerUrl;

/// `mqtt://host[:port]` or `mqtts://host[:port]`; nothing after the
/// authority, because a path or credentials in the URL would be ignored
/// silently by MQTT.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let shown = crate::config::redact_url(url);
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!("{shown:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '@', '?']) {
        return Err(format!(
            "{shown:?} must be only scheme, host and port (set username and password as keys)"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 address in brackets has colons of its own.
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("{shown:?} has an invalid port {p:?}"))?;
            (h, port)
        }
        _ => (rest, default_port),
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{shown:?}: write an IPv6 address in brackets, as mqtt://[::1]:1883"
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{shown:?} has no host"));
    }
    Ok(BrokerUrl {
        tls,
        host: host.to_owned(),
        port,
    })
}

pub(super) fn check_http_url(url: &str) -> Result<(), String> {
    let shown = crate::config::redact_url(url);
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{shown:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{shown:?} has no host"));
    }
    if rest
        .split('/')
        .next()
        .is_some_and(|authority| authority.contains('@'))
    {
        return Err(format!(
            "{shown:?} must not carry credentials; use username/password or token keys"
        ));
    }
    Ok(())
}

/// MQTT topic filter rules: `#` only as the whole last level, `+` only as a
/// whole level, no NUL, and a `$share/GROUP/` prefix with a filter after it.
pub fn check_topic_filter(filter: &str) -> Result<(), String> {
    let inner = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f))
                if !group.is_empty() && !group.contains(['+', '#']) && !f.is_empty() =>
            {
                f
            }
            _ => {
                return Err(format!(
                    "{filter:?}: a shared subscription is $share/GROUP/FILTER"
                ));
            }
        },
        None => filter,
    };
    if inner.contains('\0') {
        return Err(format!("{filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = inner.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "{filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("{filter:?}: '+' must be a whole level"));
        }
    }
    Ok(())
}
