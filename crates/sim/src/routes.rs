//! The emulated API's route table and the axum-style extractor errors the real server
//! answers with: unknown path → 404 empty, known path with another verb → 405 empty,
//! unparseable `{id}` → 400 text `Invalid URL: Cannot parse `abc` to a `u64``, bad
//! query → 400 text `Failed to deserialize query string: …`.

use http::Method;

/// Every emulated endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ListVms,
    GetVm,
    PatchVm,
    TimeSeries,
    Start,
    Stop,
    Restart,
    RenewQuote,
    Renew,
    SubscriptionRenew,
    GetPayment,
    History,
    Account,
    PaymentMethods,
    Subscriptions,
    GetSubscription,
    PatchSubscription,
    SubscriptionPayments,
    SubscriptionRenewQuote,
    Templates,
    Images,
    PublicPaymentMethods,
    ExchangeRate,
}

impl Endpoint {
    /// Public endpoints need no Authorization.
    pub fn is_public(self) -> bool {
        matches!(
            self,
            Endpoint::Templates
                | Endpoint::Images
                | Endpoint::PublicPaymentMethods
                | Endpoint::ExchangeRate
        )
    }
}

struct Route {
    template: &'static str,
    methods: &'static [(Method, Endpoint)],
}

/// Static segments win over `{id}` (axum's matcher), so static routes come first.
const ROUTES: &[Route] = &[
    Route {
        template: "/api/v1/vm",
        methods: &[(Method::GET, Endpoint::ListVms)],
    },
    Route {
        template: "/api/v1/vm/templates",
        methods: &[(Method::GET, Endpoint::Templates)],
    },
    Route {
        template: "/api/v1/image",
        methods: &[(Method::GET, Endpoint::Images)],
    },
    Route {
        template: "/api/v1/payment/methods",
        methods: &[(Method::GET, Endpoint::PublicPaymentMethods)],
    },
    Route {
        template: "/api/v1/exchange-rate",
        methods: &[(Method::GET, Endpoint::ExchangeRate)],
    },
    Route {
        template: "/api/v1/account",
        methods: &[(Method::GET, Endpoint::Account)],
    },
    Route {
        template: "/api/v1/payment-methods",
        methods: &[(Method::GET, Endpoint::PaymentMethods)],
    },
    Route {
        template: "/api/v1/subscriptions",
        methods: &[(Method::GET, Endpoint::Subscriptions)],
    },
    Route {
        template: "/api/v1/vm/{id}",
        methods: &[
            (Method::GET, Endpoint::GetVm),
            (Method::PATCH, Endpoint::PatchVm),
        ],
    },
    Route {
        template: "/api/v1/vm/{id}/time-series",
        methods: &[(Method::GET, Endpoint::TimeSeries)],
    },
    Route {
        template: "/api/v1/vm/{id}/start",
        methods: &[(Method::PATCH, Endpoint::Start)],
    },
    Route {
        template: "/api/v1/vm/{id}/stop",
        methods: &[(Method::PATCH, Endpoint::Stop)],
    },
    Route {
        template: "/api/v1/vm/{id}/restart",
        methods: &[(Method::PATCH, Endpoint::Restart)],
    },
    Route {
        template: "/api/v1/vm/{id}/renew/quote",
        methods: &[(Method::GET, Endpoint::RenewQuote)],
    },
    Route {
        template: "/api/v1/vm/{id}/renew",
        methods: &[(Method::GET, Endpoint::Renew)],
    },
    Route {
        template: "/api/v1/payment/{id}",
        methods: &[(Method::GET, Endpoint::GetPayment)],
    },
    Route {
        template: "/api/v1/subscriptions/{id}/renew",
        methods: &[(Method::GET, Endpoint::SubscriptionRenew)],
    },
    Route {
        template: "/api/v1/vm/{id}/history",
        methods: &[(Method::GET, Endpoint::History)],
    },
    Route {
        template: "/api/v1/subscriptions/{id}",
        methods: &[
            (Method::GET, Endpoint::GetSubscription),
            (Method::PATCH, Endpoint::PatchSubscription),
        ],
    },
    Route {
        template: "/api/v1/subscriptions/{id}/payments",
        methods: &[(Method::GET, Endpoint::SubscriptionPayments)],
    },
    Route {
        template: "/api/v1/subscriptions/{id}/renew/quote",
        methods: &[(Method::GET, Endpoint::SubscriptionRenewQuote)],
    },
];

/// Result of routing a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    NotFound,
    /// Path known, verb not: the `Allow` header value.
    MethodNotAllowed {
        template: &'static str,
        allow: String,
    },
    Found {
        template: &'static str,
        endpoint: Endpoint,
        /// The raw `{id}` segment, if the template has one.
        id: Option<String>,
    },
}

impl Routed {
    pub fn template(&self) -> Option<&'static str> {
        match self {
            Routed::NotFound => None,
            Routed::MethodNotAllowed { template, .. } | Routed::Found { template, .. } => {
                Some(template)
            }
        }
    }
}

/// Matches `path` (raw, no query) and `method` against the table.
pub fn route(path: &str, method: &Method) -> Routed {
    for r in ROUTES {
        let Some(id) = match_template(r.template, path) else {
            continue;
        };
        // HEAD is served by GET routes, as in axum.
        let want = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        if let Some((_, endpoint)) = r.methods.iter().find(|(m, _)| m == want) {
            return Routed::Found {
                template: r.template,
                endpoint: *endpoint,
                id,
            };
        }
        let mut allow: Vec<&str> = r.methods.iter().map(|(m, _)| m.as_str()).collect();
        if allow.contains(&"GET") {
            allow.push("HEAD");
        }
        return Routed::MethodNotAllowed {
            template: r.template,
            allow: allow.join(","),
        };
    }
    Routed::NotFound
}

/// `Some(id segment or None)` when `path` fits `template`.
fn match_template(template: &str, path: &str) -> Option<Option<String>> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut id = None;
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg.to_string()),
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

/// Parses a path id like axum's `Path<u64>` (percent-decoded first).
/// The error is the text axum answers with, so the fake server reads like the real one.
pub(crate) fn parse_id(raw: &str) -> Result<u64, String> {
    let decoded =
        percent_decode(raw).map_err(|_| "Invalid URL: Invalid UTF-8 in `id`".to_string())?;
    decoded
        .parse::<u64>()
        .map_err(|_| format!("Invalid URL: Cannot parse `{decoded}` to a `u64`"))
}

fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or_default();
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
}

/// Query string pairs, percent- and `+`-decoded.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec =
                |s: &str| percent_decode(&s.replace('+', " ")).unwrap_or_else(|_| s.to_string());
            (dec(k), dec(v))
        })
        .collect()
}

/// An optional numeric query field; `Err` is the 400 text axum's `Query` would send.
pub fn query_num<T>(pairs: &[(String, String)], key: &str) -> Result<Option<T>, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) => v
            .parse::<T>()
            .map(Some)
            .map_err(|e| format!("Failed to deserialize query string: {key}: {e}")),
    }
}

/// An optional text query field.
pub fn query_str<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing() {
        assert!(matches!(
            route("/api/v1/vm/templates", &Method::GET),
            Routed::Found {
                endpoint: Endpoint::Templates,
                ..
            }
        ));
        assert!(matches!(
            route("/api/v1/vm/7/time-series", &Method::GET),
            Routed::Found { endpoint: Endpoint::TimeSeries, id: Some(ref i), .. } if i == "7"
        ));
        assert!(matches!(
            route("/api/v1/vm/1/restart", &Method::POST),
            Routed::MethodNotAllowed { .. }
        ));
        assert_eq!(route("/api/v1/vm/", &Method::GET), Routed::NotFound);
        assert_eq!(route("/api/v1/account/", &Method::GET), Routed::NotFound);
        assert_eq!(route("/nope", &Method::GET), Routed::NotFound);
    }

    #[test]
    fn ids_and_queries() {
        assert_eq!(parse_id("12"), Ok(12));
        assert_eq!(parse_id("%31"), Ok(1));
        assert_eq!(
            parse_id("abc"),
            Err("Invalid URL: Cannot parse `abc` to a `u64`".to_string())
        );
        let q = query_pairs(Some("intervals=x&method=nwc"));
        assert_eq!(query_str(&q, "method"), Some("nwc"));
        assert_eq!(
            query_num::<u32>(&q, "intervals"),
            Err(
                "Failed to deserialize query string: intervals: invalid digit found in string"
                    .into()
            )
        );
    }
}
