//! Selecting members by service, locality, metadata and status.

use std::collections::BTreeMap;

use wildmatch::WildMatch;

use crate::member::{Member, MemberStatus};

/// A compiled member filter. Empty fields match anything; the others accept
/// `*` and `?` globs. A locality pattern also matches every locality below it
/// in the dotted hierarchy (`aws.us-east-1` matches `aws.us-east-1.us-east-1b`),
/// as a Consul or etcd user filtering by region would expect.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The service pattern, if any.
    service: Option<WildMatch>,
    /// The locality pattern and its raw text (for the hierarchy prefix rule).
    locality: Option<(WildMatch, String)>,
    /// Metadata keys that must be present with a matching value.
    metadata: Vec<(String, WildMatch)>,
    /// The status a member must have, if any.
    status: Option<MemberStatus>,
}

impl Filter {
    /// Builds a filter from its parts; empty strings mean "any".
    pub fn new(
        service: &str,
        locality: &str,
        metadata: &BTreeMap<String, String>,
        status: Option<MemberStatus>,
    ) -> Filter {
        let pattern = |s: &str| (!s.is_empty() && s != "*").then(|| WildMatch::new(s));
        Filter {
            service: pattern(service),
            locality: pattern(locality).map(|w| (w, locality.to_string())),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.clone(), WildMatch::new(v)))
                .collect(),
            status,
        }
    }

    /// A filter that matches every member.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// True when the filter matches every member, so callers can skip it.
    pub fn is_all(&self) -> bool {
        self.service.is_none()
            && self.locality.is_none()
            && self.metadata.is_empty()
            && self.status.is_none()
    }

    /// Whether the member is selected.
    pub fn matches(&self, member: &Member) -> bool {
        let spec = &member.spec;
        if let Some(service) = &self.service
            && !service.matches(&spec.service)
        {
            return false;
        }
        if let Some((pattern, raw)) = &self.locality {
            let below = spec
                .locality
                .strip_prefix(raw.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            if !below && !pattern.matches(&spec.locality) {
                return false;
            }
        }
        for (key, pattern) in &self.metadata {
            match spec.metadata.get(key) {
                Some(value) if pattern.matches(value) => {}
                _ => return false,
            }
        }
        if let Some(status) = self.status
            && member.status != status
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(service: &str, locality: &str, meta: &[(&str, &str)]) -> Member {
        let mut m = Member::for_test("m", service);
        m.spec.locality = locality.into();
        m.spec.metadata = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = Filter::new("", "", &BTreeMap::new(), None);
        assert!(f.is_all());
        assert!(f.matches(&member("a", "", &[])));
    }

    #[test]
    fn service_globs() {
        let f = Filter::new("order*", "", &BTreeMap::new(), None);
        assert!(f.matches(&member("orders", "", &[])));
        assert!(!f.matches(&member("billing", "", &[])));
    }

    #[test]
    fn locality_matches_itself_its_children_and_globs() {
        let f = Filter::new("", "aws.us-east-1", &BTreeMap::new(), None);
        assert!(f.matches(&member("s", "aws.us-east-1", &[])));
        assert!(f.matches(&member("s", "aws.us-east-1.us-east-1b", &[])));
        assert!(!f.matches(&member("s", "aws.us-east-10", &[])));
        let g = Filter::new("", "aws.*.us-east-1b", &BTreeMap::new(), None);
        assert!(g.matches(&member("s", "aws.us-east-1.us-east-1b", &[])));
    }

    #[test]
    fn metadata_and_status() {
        let meta = BTreeMap::from([("env".to_string(), "prod*".to_string())]);
        let f = Filter::new("", "", &meta, Some(MemberStatus::Up));
        assert!(f.matches(&member("s", "", &[("env", "production")])));
        assert!(!f.matches(&member("s", "", &[("env", "dev")])));
        assert!(!f.matches(&member("s", "", &[])));
        let mut down = member("s", "", &[("env", "prod")]);
        down.status = MemberStatus::Down;
        assert!(!f.matches(&down));
    }
}
