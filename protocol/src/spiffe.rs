//! SPIFFE identities in certificate URI SANs.

use uuid::Uuid;

/// An appliance's identity: `spiffe://<trust-domain>/tenant/<tenant_id>/appliance/<appliance_id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplianceIdentity {
    pub tenant_id: Uuid,
    pub appliance_id: Uuid,
}

impl ApplianceIdentity {
    /// The URI for `trust_domain`.
    pub fn uri(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/tenant/{}/appliance/{}",
            self.tenant_id.hyphenated(),
            self.appliance_id.hyphenated()
        )
    }

    /// Parses an appliance URI of exactly this trust domain (ids in canonical lower-case form).
    pub fn parse(uri: &str, trust_domain: &str) -> Option<ApplianceIdentity> {
        let rest = uri
            .strip_prefix("spiffe://")?
            .strip_prefix(trust_domain)?
            .strip_prefix("/tenant/")?;
        let (tenant, rest) = rest.split_once("/appliance/")?;
        let tenant_id = Uuid::try_parse(tenant).ok()?;
        let appliance_id = Uuid::try_parse(rest).ok()?;
        let id = ApplianceIdentity {
            tenant_id,
            appliance_id,
        };
        // Only the canonical spelling identifies: no case or format variants.
        (id.uri(trust_domain) == uri).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let t = "aaaaaaaa-1111-4111-8111-111111111111";
        let a = "22222222-2222-4222-8222-222222222222";
        let good = format!("spiffe://alga.test/tenant/{t}/appliance/{a}");
        assert!(ApplianceIdentity::parse(&good, "alga.test").is_some());
        let bad = [
            format!("spiffe://other.test/tenant/{t}/appliance/{a}"),
            format!("spiffe://alga.test.evil/tenant/{t}/appliance/{a}"),
            format!("spiffe://alga.test/tenant/{t}/appliance/{a}/x"),
            format!(
                "spiffe://alga.test/tenant/{}/appliance/{a}",
                t.to_uppercase()
            ),
            format!("spiffe://alga.test/tenant/{t}"),
            "spiffe://alga.test/service/nm-store".to_owned(),
            format!("https://alga.test/tenant/{t}/appliance/{a}"),
        ];
        for b in bad {
            assert_eq!(ApplianceIdentity::parse(&b, "alga.test"), None, "{b}");
        }
    }
}
