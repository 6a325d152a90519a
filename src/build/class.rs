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
    /// The class name wicket answers to where no IngressClass object
    /// decides (`--ingress-class`): the value of the legacy
    /// `kubernetes.io/ingress.class` annotation, the name served by
    /// [`ClassOptions::by_name`], and the IngressClass the chart creates.
    pub ingress_class: String,
    /// The `spec.controller` of the IngressClasses wicket serves
    /// (`--controller-class`): every one of them, whatever its name.
    pub controller_class: String,
    /// Serve Ingresses that name no class (`--watch-ingress-without-class`).
    pub watch_without_class: bool,
    /// Serve `spec.ingressClassName: <ingress_class>` even when no
    /// IngressClass of that name exists (`--ingress-class-by-name`).
    pub by_name: bool,
}

impl Default for ClassOptions {
    fn default() -> Self {
        ClassOptions {
            ingress_class: "wicket".into(),
            controller_class: "wicket.dev/ingress-controller".into(),
            watch_without_class: false,
            by_name: false,
        }
    }
}

/// Where an Ingress names its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested<'a> {
    /// The legacy `kubernetes.io/ingress.class` annotation, which wins
    /// over `spec.ingressClassName`, as in ingress-nginx.
    Annotation(&'a str),
    /// `spec.ingressClassName`.
    Spec(&'a str),
    /// Neither (or both empty).
    None,
}

/// The class an Ingress asks for, and where.
pub fn requested(ing: &Ingress) -> Requested<'_> {
    let annotation = ing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
        .filter(|c| !c.is_empty());
    if let Some(a) = annotation {
        return Requested::Annotation(a);
    }
    match ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .filter(|c| !c.is_empty())
    {
        Some(name) => Requested::Spec(name),
        None => Requested::None,
    }
}

fn controller_of(class: &IngressClass) -> Option<&str> {
    class.spec.as_ref().and_then(|s| s.controller.as_deref())
}

fn controller_matches(class: &IngressClass, opts: &ClassOptions) -> bool {
    controller_of(class) == Some(opts.controller_class.as_str())
}

fn is_default(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Whether wicket serves this Ingress.
///
/// - `spec.ingressClassName`: ours when the IngressClass of that name has
///   our controller (several classes at once, as the Kubernetes docs make
///   `spec.controller` the field that decides), or, with
///   `--ingress-class-by-name`, when it is `--ingress-class` and no
///   IngressClass of that name exists. A class that does not exist is
///   nobody's (the Kubernetes conformance rule).
/// - The legacy annotation: ours when it is `--ingress-class`, unless an
///   IngressClass of that name belongs to another controller.
/// - No class: ours with `--watch-ingress-without-class`, or when an
///   IngressClass of ours is marked as the cluster default.
pub fn is_ours(ing: &Ingress, cluster: &Cluster, opts: &ClassOptions) -> bool {
    match requested(ing) {
        Requested::Spec(name) => match cluster.ingress_classes.get(name) {
            Some(class) => controller_matches(class, opts),
            None => opts.by_name && name == opts.ingress_class,
        },
        Requested::Annotation(name) => {
            name == opts.ingress_class
                && cluster
                    .ingress_classes
                    .get(name)
                    .is_none_or(|c| controller_matches(c, opts))
        }
        Requested::None => {
            opts.watch_without_class
                || cluster
                    .ingress_classes
                    .values()
                    .any(|c| controller_matches(c, opts) && is_default(c))
        }
    }
}

/// Why wicket does not serve an Ingress that [`is_ours`] turns down, for
/// `wicket check` and the debug log.
pub fn why_not_ours(ing: &Ingress, cluster: &Cluster, opts: &ClassOptions) -> String {
    use crate::problem::Printable;
    let foreign = |name: &str, class: &IngressClass| match controller_of(class) {
        Some(other) => format!(
            "its IngressClass {} belongs to controller {}, not {} (--controller-class)",
            Printable(name),
            Printable(other),
            opts.controller_class
        ),
        None => format!("its IngressClass {} names no controller", Printable(name)),
    };
    match requested(ing) {
        Requested::Spec(name) => match cluster.ingress_classes.get(name) {
            Some(class) => foreign(name, class),
            None if name == opts.ingress_class => format!(
                "it names class {}, and no IngressClass of that name exists; create it with spec.controller {}, or serve the class by name with --ingress-class-by-name",
                Printable(name),
                opts.controller_class
            ),
            None => format!(
                "it names class {}, and no IngressClass of that name exists",
                Printable(name)
            ),
        },
        Requested::Annotation(name) => match cluster.ingress_classes.get(name) {
            Some(class) if name == opts.ingress_class => foreign(name, class),
            _ => format!(
                "its {LEGACY_CLASS_ANNOTATION} annotation names class {}; wicket answers that annotation for class {} (--ingress-class)",
                Printable(name),
                opts.ingress_class
            ),
        },
        Requested::None => "it names no class, and wicket serves class-less Ingresses only with --watch-ingress-without-class or a default IngressClass of its controller".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> Cluster {
        let mut c = Cluster::default();
        for o in crate::source::manifest::parse(yaml, false).unwrap().objects {
            c.insert(o);
        }
        c
    }

    fn ing(meta: &str, spec: &str) -> Ingress {
        serde_yaml::from_str(&format!(
            "metadata: {{name: i, namespace: n{meta}}}\nspec: {{{spec}}}\n"
        ))
        .unwrap()
    }

    const CLASSES: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: wicket.dev/ingress-controller}\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx-example}\nspec: {controller: wicket.dev/ingress-controller}\n---\napiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: theirs}\nspec: {controller: example.com/other}\n";

    #[test]
    fn every_class_of_our_controller_is_ours() {
        let c = cluster(CLASSES);
        let opts = ClassOptions::default();
        let yes = |i: &Ingress| is_ours(i, &c, &opts);
        assert!(yes(&ing("", "ingressClassName: wicket")));
        assert!(yes(&ing("", "ingressClassName: nginx-example")));
        assert!(!yes(&ing("", "ingressClassName: theirs")));
        assert!(!yes(&ing("", "ingressClassName: missing")));
        // The annotation wins over the field, and answers to --ingress-class.
        let legacy = ", annotations: {kubernetes.io/ingress.class: wicket}";
        assert!(yes(&ing(legacy, "ingressClassName: theirs")));
        let legacy_other = ", annotations: {kubernetes.io/ingress.class: nginx-example}";
        assert!(!yes(&ing(legacy_other, "ingressClassName: wicket")));
        assert!(!yes(&ing("", "")));
        assert!(is_ours(
            &ing("", ""),
            &c,
            &ClassOptions {
                watch_without_class: true,
                ..ClassOptions::default()
            }
        ));
        let why = why_not_ours(&ing("", "ingressClassName: theirs"), &c, &opts);
        assert!(
            why.contains("belongs to controller example.com/other"),
            "{why}"
        );
        let why = why_not_ours(&ing("", "ingressClassName: missing"), &c, &opts);
        assert!(why.contains("no IngressClass of that name exists"), "{why}");
        let why = why_not_ours(&ing(legacy_other, ""), &c, &opts);
        assert!(
            why.contains("annotation names class nginx-example"),
            "{why}"
        );
    }

    #[test]
    fn a_missing_class_is_served_by_name_only_when_asked() {
        let empty = Cluster::default();
        let by_name = ClassOptions {
            by_name: true,
            ..ClassOptions::default()
        };
        let named = ing("", "ingressClassName: wicket");
        assert!(!is_ours(&named, &empty, &ClassOptions::default()));
        assert!(
            why_not_ours(&named, &empty, &ClassOptions::default())
                .contains("--ingress-class-by-name")
        );
        assert!(is_ours(&named, &empty, &by_name));
        assert!(!is_ours(
            &ing("", "ingressClassName: other"),
            &empty,
            &by_name
        ));
        // By name never takes a class another controller owns.
        let theirs = cluster(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: wicket}\nspec: {controller: example.com/other}\n",
        );
        assert!(!is_ours(&named, &theirs, &by_name));
    }

    #[test]
    fn a_default_class_of_ours_takes_class_less_ingresses() {
        let c = cluster(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: internal, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}\nspec: {controller: wicket.dev/ingress-controller}\n",
        );
        assert!(is_ours(&ing("", ""), &c, &ClassOptions::default()));
        let theirs = cluster(
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: internal, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}\nspec: {controller: example.com/other}\n",
        );
        assert!(!is_ours(&ing("", ""), &theirs, &ClassOptions::default()));
    }
}
