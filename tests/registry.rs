//! The registry is the one source: every row that claims support has a
//! parser that reads its key (and one that does not, none), and the
//! README's tables are generated from it.

use std::collections::BTreeMap;

use wicket::annotations::registry::{self, ANNOTATIONS};
use wicket::annotations::{self, Reader};

const PREFIX: &str = "nginx.ingress.kubernetes.io";

/// Keys an annotation needs beside it to mean anything.
fn companions(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "fastcgi-index" | "fastcgi-params-configmap" => &[("backend-protocol", "FCGI")],
        "x-forwarded-prefix" => &[("rewrite-target", "/")],
        "permanent-redirect-code" => &[("permanent-redirect", "/moved")],
        "temporal-redirect-code" => &[("temporal-redirect", "/moved")],
        _ => &[],
    }
}

#[test]
fn every_supported_row_is_read_by_a_parser_and_no_other() {
    for row in ANNOTATIONS {
        let mut map = BTreeMap::new();
        let value = if row.example.is_empty() {
            "x"
        } else {
            row.example
        };
        map.insert(format!("{PREFIX}/{}", row.name), value.to_string());
        for (k, v) in companions(row.name) {
            map.insert(format!("{PREFIX}/{k}"), v.to_string());
        }
        let mut reader = Reader::new(Some(&map), PREFIX);
        let mut errors = Vec::new();
        annotations::parse_ingress(
            &mut reader,
            &mut errors,
            annotations::Policy {
                allow_snippets: true,
            },
        );
        let read = reader
            .keys()
            .iter()
            .find(|(n, _, _)| *n == row.name)
            .map(|(_, _, read)| *read)
            .expect("the key is there");
        if row.support.acted_on() {
            assert!(read, "{} claims support but no parser reads it", row.name);
            assert!(
                errors.is_empty(),
                "{}: its example {:?} is refused: {errors:?}",
                row.name,
                row.example
            );
        } else {
            assert!(
                !read,
                "{} is read but the registry says unsupported",
                row.name
            );
        }
    }
}

#[test]
fn an_annotation_name_is_found_and_an_unknown_one_is_not() {
    assert!(registry::annotation("proxy-body-size").is_some());
    assert!(
        registry::annotation("whitelist-source-range")
            .unwrap()
            .protection
    );
    assert!(registry::annotation("proxy-bodysize").is_none());
}

/// The text between `<!-- NAME -->` and `<!-- /NAME -->`.
fn section<'a>(text: &'a str, name: &str) -> (usize, usize, &'a str) {
    let open = format!("<!-- {name} -->\n");
    let close = format!("<!-- /{name} -->");
    let start = text
        .find(&open)
        .unwrap_or_else(|| panic!("README.md has no {open:?} marker"))
        + open.len();
    let end = text[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("README.md has no {close:?} marker"))
        + start;
    (start, end, &text[start..end])
}

#[test]
fn the_readme_tables_are_the_registry() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let mut readme = std::fs::read_to_string(path).unwrap();
    let mut stale = Vec::new();
    for (name, want) in [
        ("registry:annotations", registry::annotations_markdown()),
        ("registry:configmap", registry::keys_markdown()),
    ] {
        let (start, end, have) = section(&readme, name);
        if have != want {
            stale.push(name);
            readme.replace_range(start..end, &want);
        }
    }
    if stale.is_empty() {
        return;
    }
    if std::env::var_os("WICKET_UPDATE_README").is_some() {
        std::fs::write(path, readme).unwrap();
        return;
    }
    panic!(
        "README.md's {} differ from the registry (src/annotations/registry.rs); run `WICKET_UPDATE_README=1 cargo test --test registry` to write them",
        stale.join(" and ")
    );
}
