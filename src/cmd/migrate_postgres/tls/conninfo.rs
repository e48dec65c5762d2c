//! `sslmode` and `sslrootcert` out of a libpq connection string (`key=value` or a `postgres[ql]://` URL):
//! tokio-postgres knows neither `verify-*` nor `sslrootcert`, so they are taken out here and the rest
//! is handed over as it was written.

/// The connection string without `sslmode`/`sslrootcert`, and those two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub rest: String,
    pub mode: Option<String>,
    pub root: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `key=value` string or a `postgres[ql]://` URL. A string
/// this cannot read is returned whole, for tokio-postgres to report.
pub fn split(conn: &str) -> Split {
    let parsed = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn)
    } else {
        split_key_values(conn)
    };
    parsed.unwrap_or_else(|| Split {
        rest: conn.to_string(),
        mode: None,
        root: None,
    })
}

fn split_url(conn: &str) -> Option<Split> {
    let Some((base, query)) = conn.split_once('?') else {
        return Some(Split {
            rest: conn.to_string(),
            mode: None,
            root: None,
        });
    };
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => mode = Some(percent_decode(value)?),
            "sslrootcert" => root = Some(percent_decode(value)?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Some(Split { rest, mode, root })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// libpq's `key = value` syntax: white space between pairs and around `=`, a value single-quoted
/// (with `\'` and `\\`) or bare up to white space.
fn split_key_values(conn: &str) -> Option<Split> {
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    let mut chars = conn.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        chars.next_if(|(_, c)| *c == '=')?;
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next()?.1 {
                    '\'' => break,
                    '\\' => value.push(chars.next()?.1),
                    c => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                value.push(if c == '\\' { chars.next()?.1 } else { c });
            }
        }
        let end = chars.peek().map_or(conn.len(), |(i, _)| *i);
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(conn[start..end].trim_end()),
        }
    }
    Some(Split {
        rest: kept.join(" "),
        mode,
        root,
    })
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn ssl_keys_are_taken_out_of_key_value_strings() {
        let s = split("host=db.example port=5432 sslmode=verify-full user=me sslrootcert='/etc/ca dir/ca.pem' dbname = 'a \\' b'");
        assert_eq!(s.mode.as_deref(), Some("verify-full"));
        assert_eq!(s.root.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(
            s.rest,
            "host=db.example port=5432 user=me dbname = 'a \\' b'"
        );
        let parsed = tokio_postgres::Config::from_str(&s.rest).unwrap();
        assert_eq!(parsed.get_dbname(), Some("a ' b"));
        let none = split("host=127.0.0.1 user=postgres");
        assert_eq!((none.mode, none.root), (None, None));
        assert_eq!(none.rest, "host=127.0.0.1 user=postgres");
    }

    #[test]
    fn ssl_keys_are_taken_out_of_urls() {
        let s = split("postgresql://me@db.example:5432/scores?sslmode=require&application_name=x&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(s.mode.as_deref(), Some("require"));
        assert_eq!(s.root.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            s.rest,
            "postgresql://me@db.example:5432/scores?application_name=x"
        );
        assert_eq!(
            split("postgres://h/db?sslmode=disable").rest,
            "postgres://h/db"
        );
    }
}
