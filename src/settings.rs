//! Global settings from the ConfigMap named by `--configmap`, with
//! ingress-nginx's key names. Each key is parsed into a typed value or
//! reported; keys wicket does not support are reported once and ignored.

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Serialize;

use crate::cluster::ObjectRef;
use crate::problem::{Problem, Quoted};
use crate::values::Invalid;

/// An nginx size: a number with an optional `k`, `m` or `g` suffix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Size(String);

impl Size {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        let suffixes = s.len() - digits.len();
        if digits.is_empty()
            || digits.len() > 9
            || suffixes > 1
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Invalid(
                "must be a number with an optional k, m or g suffix, such as 8m".into(),
            ));
        }
        Ok(Size(s.to_ascii_lowercase()))
    }
}

/// A duration in whole seconds: `60` or `60s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Seconds(pub u32);

impl Seconds {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let n = s.strip_suffix('s').unwrap_or(s);
        match n.parse::<u32>() {
            Ok(v) if v <= 86_400 && !n.starts_with('+') => Ok(Seconds(v)),
            _ => Err(Invalid(
                "must be a whole number of seconds up to 86400, such as 60 or 60s".into(),
            )),
        }
    }
}

/// A count from 0 to 100000.
fn count(s: &str) -> Result<u32, Invalid> {
    match s.parse::<u32>() {
        Ok(v) if v <= 100_000 && !s.starts_with('+') => Ok(v),
        _ => Err(Invalid("must be a whole number up to 100000".into())),
    }
}

/// The settings the templates use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// `proxy-body-size`: largest request body (`client_max_body_size`).
    pub proxy_body_size: Size,
    /// `proxy-connect-timeout`, `proxy-read-timeout`, `proxy-send-timeout`.
    pub proxy_connect_timeout: Seconds,
    pub proxy_read_timeout: Seconds,
    pub proxy_send_timeout: Seconds,
    /// `keep-alive`: how long an idle client connection stays open.
    pub keep_alive: Seconds,
    /// `upstream-keepalive-connections`: idle connections kept per upstream
    /// and worker.
    pub upstream_keepalive_connections: u32,
    /// `worker-shutdown-timeout`: how long old workers may finish requests
    /// after a reload.
    pub worker_shutdown_timeout: Seconds,
    /// `proxy-max-temp-file-size`: the most of one response nginx buffers
    /// on disk while the client reads slowly (past it, nginx reads from the
    /// upstream only as fast as the client does).
    pub proxy_max_temp_file_size: Size,
    /// `allow-snippet-annotations`: whether Ingress authors may put raw nginx
    /// configuration in (`server-snippet`, `configuration-snippet`).
    pub allow_snippet_annotations: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy_body_size: Size("1m".into()),
            proxy_connect_timeout: Seconds(5),
            proxy_read_timeout: Seconds(60),
            proxy_send_timeout: Seconds(60),
            keep_alive: Seconds(75),
            upstream_keepalive_connections: 32,
            worker_shutdown_timeout: Seconds(10),
            proxy_max_temp_file_size: Size("128m".into()),
            allow_snippet_annotations: false,
        }
    }
}

impl Settings {
    /// Reads a ConfigMap's `data`.
    pub fn from_config_map(
        cm: &ConfigMap,
        object: &ObjectRef,
        problems: &mut Vec<Problem>,
    ) -> Settings {
        let mut s = Settings::default();
        for (key, value) in cm.data.iter().flatten() {
            let field = Some(format!("data[{}]", Quoted(key)));
            let result = match key.as_str() {
                "proxy-body-size" => Size::parse(value).map(|v| s.proxy_body_size = v),
                "proxy-connect-timeout" => {
                    Seconds::parse(value).map(|v| s.proxy_connect_timeout = v)
                }
                "proxy-read-timeout" => Seconds::parse(value).map(|v| s.proxy_read_timeout = v),
                "proxy-send-timeout" => Seconds::parse(value).map(|v| s.proxy_send_timeout = v),
                "keep-alive" => Seconds::parse(value).map(|v| s.keep_alive = v),
                "upstream-keepalive-connections" => {
                    count(value).map(|v| s.upstream_keepalive_connections = v)
                }
                "worker-shutdown-timeout" => {
                    Seconds::parse(value).map(|v| s.worker_shutdown_timeout = v)
                }
                "proxy-max-temp-file-size" => {
                    Size::parse(value).map(|v| s.proxy_max_temp_file_size = v)
                }
                "allow-snippet-annotations" => match value.as_str() {
                    "true" | "false" => {
                        s.allow_snippet_annotations = value == "true";
                        Ok(())
                    }
                    _ => Err(Invalid("must be \"true\" or \"false\"".into())),
                },
                _ => {
                    problems.push(Problem::ignored(
                        object,
                        field,
                        "setting not supported by wicket yet; ignored",
                    ));
                    continue;
                }
            };
            if let Err(e) = result {
                problems.push(Problem::warning(
                    object,
                    field,
                    format!("{}: {e}; the default is used", Quoted(value)),
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Kind, ObjectKey};

    #[test]
    fn parses_known_keys_and_reports_the_rest() {
        let cm: ConfigMap = serde_yaml::from_str(
            "metadata: {name: c}\ndata: {proxy-body-size: 8M, proxy-read-timeout: '120', worker-shutdown-timeout: 30s, keep-alive: x;, use-gzip: 'true'}",
        )
        .unwrap();
        let r = ObjectRef::new(Kind::ConfigMap, ObjectKey::new("ns", "c"));
        let mut problems = Vec::new();
        let s = Settings::from_config_map(&cm, &r, &mut problems);
        assert_eq!(s.proxy_body_size, Size("8m".into()));
        assert_eq!(s.proxy_read_timeout, Seconds(120));
        assert_eq!(s.worker_shutdown_timeout, Seconds(30));
        assert_eq!(s.keep_alive, Seconds(75));
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "warning configmap ns/c: data[\"keep-alive\"]: \"x;\": must be a whole number of seconds up to 86400, such as 60 or 60s; the default is used",
                "ignored configmap ns/c: data[\"use-gzip\"]: setting not supported by wicket yet; ignored",
            ]
        );
    }

    #[test]
    fn sizes_and_seconds() {
        for ok in ["0", "1m", "512k", "2G", "100"] {
            assert!(Size::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "m", "1mm", "1.5m", "-1", "1 m", "1m;", "9999999999"] {
            assert!(Size::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Seconds::parse("60s"), Ok(Seconds(60)));
        assert!(Seconds::parse("1h").is_err());
        assert!(Seconds::parse("+5").is_err());
    }
}
