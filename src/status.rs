//! `token-broker status`: what the admin API says, as a table for a terminal or as JSON for a
//! script, with an exit code that says whether every upstream is healthy.

use serde_json::Value;

/// Exit codes: every upstream healthy; some upstream failing; the admin API could not be read.
pub const HEALTHY: u8 = 0;
pub const FAILING: u8 = 1;
pub const UNREACHABLE: u8 = 2;

/// Reads `/admin/upstreams` and `/admin/tokens` at `admin` and prints them.
pub async fn run(admin: &str, token: Option<&str>, json: bool) -> u8 {
    let http = crate::outbound::client(Some(std::time::Duration::from_secs(10)));
    let get = |path: &str| {
        let mut request = http.get(format!("{}{path}", admin.trim_end_matches('/')));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.map_err(|e| {
                if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    "no usable answer".to_string()
                }
            })?;
            match response.status().as_u16() {
                200 => response
                    .json::<Value>()
                    .await
                    .map_err(|_| "the answer is not JSON".to_string()),
                401 => Err("401: give the admin token with --token or TOKEN_BROKER_ADMIN_TOKEN".to_string()),
                status => Err(format!("status {status}")),
            }
        }
    };
    let (upstreams, tokens) = match (get("/admin/upstreams").await, get("/admin/tokens").await) {
        (Ok(upstreams), Ok(tokens)) => (upstreams, tokens),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("token-broker status: {admin}: {error}");
            return UNREACHABLE;
        }
    };
    let (Some(upstreams), Some(tokens)) = (upstreams.as_array(), tokens.as_array()) else {
        eprintln!("token-broker status: {admin}: the answers are not the admin API's lists");
        return UNREACHABLE;
    };
    if upstreams
        .iter()
        .any(|u| !u["failing"].is_boolean() || !u["upstream"].is_string())
    {
        eprintln!("token-broker status: {admin}: the answers are not the admin API's");
        return UNREACHABLE;
    }
    if json {
        println!("{}", serde_json::json!({ "upstreams": upstreams, "tokens": tokens }));
    } else {
        print!("{}", render(upstreams, tokens, unix_now()));
    }
    if upstreams.iter().any(|u| u["failing"] == true) {
        FAILING
    } else {
        HEALTHY
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The two tables: upstreams, then cached tokens.
pub fn render(upstreams: &[Value], tokens: &[Value], now: u64) -> String {
    // What the server says goes to a terminal: no control characters (escape sequences).
    let text = |v: &Value| {
        v.as_str()
            .map_or_else(|| "-".to_string(), |s| s.chars().filter(|c| !c.is_control()).collect())
    };
    let mut rows = vec![[
        "UPSTREAM",
        "STATE",
        "BREAKER",
        "LAST ERROR",
        "QUOTA",
        "TOKENS",
        "ENDPOINT",
    ]
    .map(String::from)
    .to_vec()];
    for upstream in upstreams {
        let name = text(&upstream["upstream"]);
        let last_error = match &upstream["last_error"] {
            Value::Object(error) => {
                let code = error
                    .get("oauth_error")
                    .and_then(Value::as_str)
                    .map_or(String::new(), |c| format!(" ({c})"));
                let ago = now.saturating_sub(error.get("at").and_then(Value::as_u64).unwrap_or(now));
                format!("{}{code} {} ago", text(&error["outcome"]), span(ago))
            }
            _ => "-".into(),
        };
        let breaker = match upstream["breaker_retry_in"].as_u64() {
            Some(secs) => format!("{} ({} left)", text(&upstream["breaker"]), span(secs)),
            None => text(&upstream["breaker"]),
        };
        let quota = match upstream["quota_limit"].as_u64() {
            Some(limit) => format!("{}/{limit}", upstream["quota_used"]),
            None => format!("{}/-", upstream["quota_used"]),
        };
        let cached = tokens.iter().filter(|t| t["upstream"] == upstream["upstream"]).count();
        rows.push(vec![
            name,
            if upstream["failing"] == true { "FAILING" } else { "ok" }.into(),
            breaker,
            last_error,
            quota,
            cached.to_string(),
            text(&upstream["token_endpoint"]),
        ]);
    }
    let mut out = table(&rows);
    out.push('\n');
    let mut rows = vec![["UPSTREAM", "SCOPES", "SOURCE", "TOKEN", "CREDENTIAL", "SERVED FOR"]
        .map(String::from)
        .to_vec()];
    for token in tokens {
        let scopes: Vec<String> = token["scopes"]
            .as_array()
            .map(|s| s.iter().map(text).collect())
            .unwrap_or_default();
        let left = token["served_until"].as_u64().unwrap_or(now).saturating_sub(now);
        rows.push(vec![
            text(&token["upstream"]),
            if scopes.is_empty() {
                "-".into()
            } else {
                scopes.join(" ")
            },
            text(&token["source"]),
            text(&token["token"]),
            text(&token["credential"]),
            span(left),
        ]);
    }
    out.push_str(&table(&rows));
    out
}

/// `rows` with each column as wide as its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `90` → `1m30s`; `7200` → `2h0m`.
fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_each_upstreams_state_and_each_token_without_secrets() {
        let upstreams = [
            json!({ "upstream": "partner", "failing": true, "breaker": "open", "breaker_retry_in": 40,
                    "last_error": { "outcome": "refused", "oauth_error": "invalid_client", "at": 990 },
                    "quota_limit": 100, "quota_used": 3, "token_endpoint": "https://as.example/token" }),
            json!({ "upstream": "reports", "failing": false, "breaker": "closed", "breaker_retry_in": null,
                    "last_error": null, "quota_limit": null, "quota_used": 1, "token_endpoint": "https://r.example/t" }),
        ];
        let tokens = [json!({ "upstream": "reports", "scopes": ["a", "b"], "source": "redis",
                              "token": "0123456789ab", "credential": "1a2b3c4d", "served_until": 1090 })];
        let text = render(&upstreams, &tokens, 1000);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("UPSTREAM  STATE    BREAKER"), "{text}");
        assert!(
            lines[1].contains("partner")
                && lines[1].contains("FAILING")
                && lines[1].contains("open (40s left)")
                && lines[1].contains("refused (invalid_client) 10s ago")
                && lines[1].contains("3/100"),
            "{text}"
        );
        assert!(
            lines[2].contains("reports") && lines[2].contains(" ok ") && lines[2].contains("1/-"),
            "{text}"
        );
        assert!(
            lines[5].contains("a b") && lines[5].contains("redis") && lines[5].ends_with("1m30s"),
            "{text}"
        );
    }
}
