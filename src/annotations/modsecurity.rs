//! `enable-modsecurity`, `enable-owasp-core-rules`,
//! `modsecurity-transaction-id` and `modsecurity-snippet`: ModSecurity (the
//! WAF of Debian's `libnginx-mod-http-modsecurity`) with the OWASP Core
//! Rule Set of `modsecurity-crs`. What the values mean together, with the
//! global keys, is decided in `build::policy`; the rules files wicket
//! writes are here.
//!
//! The rules are parsed once, at the http level (libmodsecurity parses a
//! rules file each time a `modsecurity_rules_file` names it, and the CRS
//! costs megabytes each time): `modsecurity off` there, and `on` in the
//! locations that use it, with at most a few one-line files of their own.

use super::{FieldError, Reader};
use crate::values::{Expandable, Invalid};

/// Longest `modsecurity-snippet` of the global ConfigMap.
pub const MAX_GLOBAL_RULES_LEN: usize = 64 * 1024;

/// Rule ids wicket's files use: a snippet may not use them, since a rule id
/// given twice makes nginx refuse the whole config.
pub const RESERVED_IDS: &[(u64, u64)] = &[(200_000, 200_099), (900_000, 999_999)];

/// The base configuration every ModSecurity location starts from:
/// ModSecurity's recommended one (as ingress-nginx shipped it): detection
/// only, request bodies inspected, each intervention logged to nginx's
/// error log (the audit log, which would copy credentials from request
/// headers, is off).
pub const BASE_RULES: &str = r#"# wicket: ModSecurity's recommended base configuration.
SecRuleEngine DetectionOnly
SecRequestBodyAccess On
SecRule REQUEST_HEADERS:Content-Type "^(?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "^application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRequestBodyLimit 13107200
SecRequestBodyNoFilesLimit 131072
SecRequestBodyLimitAction Reject
SecRequestBodyJsonDepthLimit 512
SecArgumentsLimit 1000
SecRule &ARGS "@ge 1000" "id:200007,phase:2,t:none,log,deny,status:400,msg:'Failed to fully parse request body due to large argument count',severity:2"
SecRule REQBODY_ERROR "!@eq 0" "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.',logdata:'%{reqbody_error_msg}',severity:2"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:200003,phase:2,t:none,log,deny,status:400,msg:'Multipart request body failed strict validation'"
SecRule MULTIPART_UNMATCHED_BOUNDARY "@eq 1" "id:200004,phase:2,t:none,log,deny,msg:'Multipart parser detected a possible unmatched boundary.'"
SecPcreMatchLimit 1000
SecPcreMatchLimitRecursion 1000
SecRule TX:/^MSC_/ "!@streq 0" "id:200005,phase:2,t:none,deny,msg:'ModSecurity internal error flagged: %{MATCHED_VAR_NAME}'"
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html text/xml
SecResponseBodyLimit 524288
SecResponseBodyLimitAction ProcessPartial
SecTmpDir /tmp/
SecDataDir /tmp/
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecStatusEngine Off
"#;

/// The OWASP Core Rule Set, from Debian's `modsecurity-crs`.
pub fn crs_rules() -> String {
    format!(
        "# wicket: the OWASP Core Rule Set (Debian's modsecurity-crs).\nInclude {}\nInclude {}/*.conf\n",
        crate::config::CRS_SETUP,
        crate::config::CRS_RULES
    )
}

/// What a location with the CRS adds: the engine blocks.
pub const BLOCK_RULES: &str =
    "# wicket: the rules block (enable-owasp-core-rules).\nSecRuleEngine On\n";

/// What a location without the CRS adds: the CRS, if another location
/// loaded it at the http level, is not run here.
pub const NO_CRS_RULES: &str =
    "# wicket: no OWASP Core Rule Set here.\nSecRuleRemoveById 900000-999999\n";

/// The names of wicket's own files (`modsecurity/NAME.conf`); snippets'
/// files are named by a hash of their text.
pub const BASE_FILE: &str = "wicket-base";
pub const CRS_FILE: &str = "wicket-crs";
pub const BLOCK_FILE: &str = "wicket-block";
pub const NO_CRS_FILE: &str = "wicket-no-crs";

/// ModSecurity rules text (`modsecurity-snippet`): printable but for line
/// breaks and tabs, and no rule id wicket's files use. It is written to a
/// file of its own, never into nginx.conf; ModSecurity parses it when
/// nginx loads the config (a text it refuses makes nginx refuse the config,
/// and wicket then leaves the Ingress out).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Rules(String);

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rules({} bytes)", self.0.len())
    }
}

impl serde::Serialize for Rules {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{} bytes of rules", self.0.len()))
    }
}

impl Rules {
    pub fn parse(s: &str, max: usize) -> Result<Self, Invalid> {
        if s.trim().is_empty() {
            return Err(Invalid("the rules are empty".into()));
        }
        if s.len() > max {
            return Err(Invalid(format!("the rules must be at most {max} bytes")));
        }
        if s.chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
        {
            return Err(Invalid(
                "the rules may not contain control characters".into(),
            ));
        }
        for id in rule_ids(s) {
            if let Some((lo, hi)) = RESERVED_IDS
                .iter()
                .find(|(lo, hi)| (*lo..=*hi).contains(&id))
            {
                return Err(Invalid(format!(
                    "rule id {id} is one wicket's rules use ({lo}-{hi}): a rule id given twice makes nginx refuse the whole config"
                )));
            }
        }
        let mut text = s.replace("\r\n", "\n");
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(Rules(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name: a hash of the text.
    pub fn file_name(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.0.as_bytes())[..12])
    }
}

/// The rule ids a rules text names (`id:123`, `id:'123'`, `id: "123"`).
pub fn rule_ids(s: &str) -> Vec<u64> {
    let lower = s.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lower[from..].find("id").map(|i| i + from) {
        from = i + 2;
        if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_') {
            continue;
        }
        let mut j = i + 2;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b':' {
            continue;
        }
        j += 1;
        while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'\'' || b[j] == b'"') {
            j += 1;
        }
        let start = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        if let Ok(n) = lower[start..j].parse() {
            out.push(n);
        }
    }
    out
}

/// `modsecurity-transaction-id`: an nginx expression (such as
/// `$request_id`) whose variables nginx knows.
pub fn transaction_id(s: &str) -> Result<Expandable, Invalid> {
    Expandable::parse(s, 256)
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModSecurity {
    pub enable: Option<bool>,
    pub owasp: Option<bool>,
    pub transaction_id: Option<Expandable>,
    pub snippet: Option<Rules>,
}

impl ModSecurity {
    /// Whether any of the keys is set.
    pub fn any(&self) -> bool {
        self.enable.is_some()
            || self.owasp.is_some()
            || self.transaction_id.is_some()
            || self.snippet.is_some()
    }
}

pub fn parse(
    reader: &mut Reader<'_>,
    errors: &mut Vec<FieldError>,
    snippets_allowed: bool,
) -> ModSecurity {
    let mut out = ModSecurity {
        enable: reader.bool("enable-modsecurity", errors),
        owasp: reader.bool("enable-owasp-core-rules", errors),
        transaction_id: reader.parse("modsecurity-transaction-id", errors, transaction_id),
        snippet: None,
    };
    if let Some(value) = reader.get("modsecurity-snippet") {
        if !snippets_allowed {
            errors.push(FieldError {
                field: reader.field("modsecurity-snippet"),
                value: String::new(),
                error: Invalid(
                    "snippet annotations are refused: the global setting allow-snippet-annotations is not \"true\"".into(),
                ),
            });
        } else {
            match Rules::parse(value, super::snippets::MAX_SNIPPET_LEN) {
                Ok(r) => out.snippet = Some(r),
                Err(error) => errors.push(FieldError {
                    field: reader.field("modsecurity-snippet"),
                    value: String::new(),
                    error,
                }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const PREFIX: &str = "nginx.ingress.kubernetes.io";

    fn parsed(pairs: &[(&str, &str)], allowed: bool) -> (ModSecurity, Vec<FieldError>) {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}/{k}"), v.to_string()))
            .collect();
        let mut r = Reader::new(Some(&map), PREFIX);
        let mut errors = Vec::new();
        (parse(&mut r, &mut errors, allowed), errors)
    }

    #[test]
    fn good_values() {
        let (m, e) = parsed(
            &[
                ("enable-modsecurity", "true"),
                ("enable-owasp-core-rules", "True"),
                ("modsecurity-transaction-id", "modsecurity-$request_id"),
                (
                    "modsecurity-snippet",
                    "SecRuleEngine On\nSecRule REQUEST_HEADERS:User-Agent \"block-ua\" \"log,deny,id:107,status:403\"",
                ),
            ],
            true,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(m.enable, Some(true));
        assert_eq!(m.owasp, Some(true));
        assert_eq!(
            m.transaction_id.unwrap().as_str(),
            "modsecurity-$request_id"
        );
        assert!(m.snippet.unwrap().as_str().ends_with("status:403\"\n"));
    }

    #[test]
    fn hostile_values_are_refused() {
        for (k, v) in [
            ("enable-modsecurity", "yes please"),
            ("enable-owasp-core-rules", "on;"),
            ("modsecurity-transaction-id", "$nope"),
            ("modsecurity-transaction-id", "a\nb"),
            ("modsecurity-transaction-id", ""),
            ("modsecurity-snippet", ""),
            ("modsecurity-snippet", "SecRuleEngine On\0"),
            (
                "modsecurity-snippet",
                "SecRule ARGS \"x\" \"id:942100,deny\"",
            ),
            (
                "modsecurity-snippet",
                "SecRule ARGS \"x\" \"ID : '200002',deny\"",
            ),
        ] {
            let (_, e) = parsed(&[(k, v)], true);
            assert_eq!(e.len(), 1, "{k}={v:?} accepted");
        }
    }

    #[test]
    fn a_snippet_is_refused_unless_snippets_are_allowed() {
        let (m, e) = parsed(&[("modsecurity-snippet", "SecRuleEngine On")], false);
        assert!(m.snippet.is_none());
        assert!(e[0].error.0.contains("allow-snippet-annotations"), "{e:?}");
    }

    #[test]
    fn rule_ids_are_found() {
        assert_eq!(
            rule_ids(
                "SecRule A \"b\" \"id:107,phase:1\"\nSecAction \"id: '9', pass\" # valid:3\nSecRule X y \"uid:5\""
            ),
            [107, 9]
        );
    }
}
