//! Which Ingresses are ours, by IngressClass.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::cluster::Cluster;

/// The legacy annotation that named a class before `spec.ingressClassName`.
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks an IngressClass as the cluster default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// How wicket decides which Ingresses to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassOptions {
    /// The IngressClass name wicket serves (`--ingress-class`).
    pub ingress_class: String,
    /// The `spec.controller` an IngressClass of that name must have
    /// (`--controller-class`).
    pub controller_class: String,
    /// Serve Ingresses that name no class (`--watch-ingress-without-class`).
    pub watch_without_class: bool,
}

impl Default for ClassOptions {
    fn default() -> Self {
        ClassOptions {
            ingress_class: "wicket".into(),
            controller_class: "wicket.dev/ingress-controller".into(),
            watch_without_class: false,
        }
    }
}

/// The class an Ingress asks for: the legacy annotation wins over
/// `spec.ingressClassName`, as in ingress-nginx.
pub fn requested_class(ing: &Ingress) -> Option<&str> {
    ing.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
        .map(String::as_str)
        .or(ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref()))
        .filter(|c| !c.is_empty())
}

fn our_class<'c>(cluster: &'c Cluster, opts: &ClassOptions) -> Option<&'c IngressClass> {
    cluster
        .ingress_classes
        .get(&opts.ingress_class)
        .map(|c| &**c)
}

fn controller_matches(class: &IngressClass, opts: &ClassOptions) -> bool {
    class.spec.as_ref().and_then(|s| s.controller.as_deref())
        == Some(opts.controller_class.as_str())
}

/// Whether wicket serves this Ingress.
///
/// - A named class is ours when it is `--ingress-class`, and the
///   IngressClass object of that name, if there is one, has our controller.
/// - No class: ours with `--watch-ingress-without-class`, or when our
///   IngressClass is marked as the cluster default.
pub fn is_ours(ing: &Ingress, cluster: &Cluster, opts: &ClassOptions) -> bool {
    match requested_class(ing) {
        Some(name) => {
            name == opts.ingress_class
                && our_class(cluster, opts).is_none_or(|c| controller_matches(c, opts))
        }
        None => {
            opts.watch_without_class
                || our_class(cluster, opts).is_some_and(|c| {
                    controller_matches(c, opts)
                        && c.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                            .is_some_and(|v| v == "true")
                })
        }
    }
}

/// Why wicket does not serve an Ingress that [`is_ours`] turns down, for
/// `wicket check` and the debug log.
pub fn why_not_ours(ing: &Ingress, cluster: &Cluster, opts: &ClassOptions) -> String {
    match requested_class(ing) {
        Some(name) if name != opts.ingress_class => format!(
            "it names class {}; wicket serves class {} (--ingress-class)",
            crate::problem::Printable(name),
            opts.ingress_class
        ),
        Some(name) => match our_class(cluster, opts).and_then(|c| c.spec.as_ref()?.controller.clone()) {
            Some(other) => format!(
                "its IngressClass {} belongs to controller {}, not {} (--controller-class)",
                crate::problem::Printable(name),
                crate::problem::Printable(&other),
                opts.controller_class
            ),
            None => format!(
                "its IngressClass {} names no controller",
                crate::problem::Printable(name)
            ),
        },
        None => "it names no class, and wicket serves class-less Ingresses only with --watch-ingress-without-class or a default IngressClass of its own".to_string(),
    }
}
