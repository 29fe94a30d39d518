//! A route's path rewrite (`rewrite:`), applied to the request the gateway forwards or
//! queues.

/// Path rewriting of a route.
#[derive(Debug, Clone, Default)]
pub struct PathRewrite {
    /// Removed from the start of the path when present.
    pub strip_prefix: Option<String>,
    /// Put in front afterwards.
    pub add_prefix: Option<String>,
    /// Regex replacement.
    pub regex: Option<(regex::Regex, String)>,
}

impl PathRewrite {
    /// The rewritten path.
    pub fn apply(&self, path: &str) -> String {
        let mut p = path.to_string();
        if let Some(prefix) = &self.strip_prefix {
            let prefix = prefix.trim_end_matches('/');
            // Whole segments only: `/app` strips `/app` and `/app/x`, never `/application`.
            if let Some(rest) = p.strip_prefix(prefix) {
                if rest.is_empty() || rest.starts_with('/') {
                    p = if rest.is_empty() {
                        "/".to_string()
                    } else {
                        rest.to_string()
                    };
                }
            }
        }
        if let Some(prefix) = &self.add_prefix {
            let prefix = prefix.trim_end_matches('/');
            p = format!("{prefix}{p}");
        }
        if let Some((re, replacement)) = &self.regex {
            p = re.replace(&p, replacement.as_str()).into_owned();
        }
        if p.is_empty() {
            p.push('/');
        }
        p
    }
}
