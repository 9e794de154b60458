//! Domain results → the public API's wire types (`alga_protocol::api`).

use alga_protocol::api as wire;

use alga_protocol::issuer_api::{SignedCredential, SignedLicense};

use crate::db::appliances::{Health, State, WithHealth};
use crate::flows::check_in::CheckedIn;
use crate::flows::lifecycle::{AppliancePage, EditionChanged, StatusChanged};
use crate::flows::redeem::Redeemed;
use crate::flows::register::CodeIssued;
use crate::flows::reissue::Reissued;
use crate::flows::revoke::Revoked;
use crate::flows::tenants::TenantDetails;

fn state(s: State) -> wire::ApplianceState {
    match s {
        State::Active => wire::ApplianceState::Active,
        State::Replaced => wire::ApplianceState::Replaced,
        State::Revoked => wire::ApplianceState::Revoked,
    }
}

fn health(h: Health) -> wire::Health {
    match h {
        Health::Ok => wire::Health::Ok,
        Health::Overdue => wire::Health::Overdue,
        Health::Stale => wire::Health::Stale,
    }
}

/// The domain health a wire name asks for.
pub fn health_filter(h: wire::Health) -> Health {
    match h {
        wire::Health::Ok => Health::Ok,
        wire::Health::Overdue => Health::Overdue,
        wire::Health::Stale => Health::Stale,
    }
}

fn tenant_status(suspended: bool) -> wire::TenantStatus {
    if suspended {
        wire::TenantStatus::Suspended
    } else {
        wire::TenantStatus::Active
    }
}

pub fn appliance(w: WithHealth) -> wire::ApplianceView {
    let a = w.appliance;
    wire::ApplianceView {
        appliance_id: a.appliance_id,
        tenant_id: a.tenant_id,
        state: state(a.state),
        health: w.health.map(health),
        hostname: a.hostname,
        version: a.version,
        code_id: a.code_id,
        credential_serial: a.credential_serial,
        credential_expires_at: a.credential_expires_at,
        created_at: a.created_at,
        last_check_in_at: a.last_check_in_at,
        revoked_at: a.revoked_at,
        replaced_by: a.replaced_by,
        replaced_at: a.replaced_at,
    }
}

pub fn appliance_page(p: AppliancePage) -> wire::AppliancePage {
    wire::AppliancePage {
        appliances: p.appliances.into_iter().map(appliance).collect(),
        next: p.next.map(|id| id.to_string()),
    }
}

pub fn tenant(d: TenantDetails) -> wire::TenantView {
    let active_appliances = d.active_appliances();
    let t = d.tenant;
    wire::TenantView {
        tenant_id: t.tenant_id,
        company: t.company,
        contact: wire::Contact {
            name: t.contact_name,
            email: t.contact_email,
        },
        edition: t.edition,
        status: tenant_status(t.suspended),
        suspended_at: t.suspended_at,
        created_at: t.created_at,
        entitlement: d.entitlement.map(|e| wire::EntitlementView {
            edition: e.edition,
            paid: e.paid,
            features: e.features,
            seats: e.seats,
            max_appliances: d.max_appliances,
            active_appliances,
        }),
        install_codes: d
            .codes
            .into_iter()
            .map(|r| wire::CodeView {
                code_id: r.binding.code_id.to_string(),
                state: r.state.as_str().to_owned(),
                expired: r.expired,
                expires_at: r.binding.expires_at,
                created_at: r.created_at,
                consumed_at: r.consumed_at,
                revoked_at: r.revoked_at,
                appliance_id: r.appliance_id,
                replaces_appliance_id: r.binding.replaces_appliance_id,
            })
            .collect(),
        appliances: d.appliances.into_iter().map(appliance).collect(),
        mail: d
            .mail
            .into_iter()
            .map(|m| wire::MailView {
                mail_id: m.mail_id,
                code_id: m.code_id,
                kind: m.kind,
                status: m.state,
                attempts: m.attempts,
                created_at: m.created_at,
                sent_at: m.sent_at,
                next_attempt_at: m.next_attempt_at,
                last_error: m.last_error,
            })
            .collect(),
    }
}

pub fn edition_changed(c: EditionChanged) -> wire::EntitlementResponse {
    wire::EntitlementResponse {
        tenant_id: c.tenant_id,
        edition: c.edition,
        previous_edition: c.previous_edition,
        changed: c.changed,
        revoked_code_ids: c.revoked_code_ids,
        active_appliances: c.active_appliances,
        max_appliances: c.max_appliances,
    }
}

pub fn revoked(r: Revoked) -> wire::RevokeResponse {
    wire::RevokeResponse {
        appliance_id: r.appliance_id,
        tenant_id: r.tenant_id,
        state: state(r.state),
        revoked_at: r.revoked_at,
        changed: r.changed,
    }
}

pub fn status_changed(c: StatusChanged) -> wire::TenantStatusResponse {
    wire::TenantStatusResponse {
        tenant_id: c.tenant_id,
        status: tenant_status(c.suspended),
        suspended_at: c.suspended_at,
    }
}

/// A minted code's answer (`POST /register-tenant`, and the `code` of a reissue).
pub fn code_issued(c: CodeIssued) -> wire::RegisterTenantResponse {
    wire::RegisterTenantResponse {
        tenant_id: c.tenant_id,
        edition: c.edition,
        install_code: wire::InstallCodeInfo {
            code_id: c.code_id,
            expires_at: c.code_expires_at,
        },
        download: wire::DownloadLink {
            url: c.download.url,
            expires_at: c.download.expires_at,
        },
        email: wire::EmailStatus { status: c.mail },
    }
}

pub fn reissued(r: Reissued) -> wire::ReissueResponse {
    wire::ReissueResponse {
        code: code_issued(r.code),
        revoked_code_ids: r.revoked_code_ids,
        replaces_appliance_id: r.replaces_appliance_id,
    }
}

fn license(l: SignedLicense) -> wire::License {
    wire::License {
        token: l.token,
        expires_at: l.expires_at,
    }
}

fn credential(c: SignedCredential) -> wire::Credential {
    wire::Credential {
        certificate: c.certificate_pem,
        chain: c.chain_pem,
        expires_at: c.expires_at,
    }
}

/// A redeem's answer; `check_in_url` is where a licensed appliance checks in.
pub fn redeemed(r: Redeemed, check_in_url: &str) -> wire::RedeemResponse {
    let licensed = r.signed.is_some();
    let (license, credential) = r.signed.map(|(l, c)| (license(l), credential(c))).unzip();
    wire::RedeemResponse {
        tenant_id: r.tenant_id,
        edition: r.edition,
        appliance_id: r.appliance_id,
        license,
        credential,
        check_in_url: licensed.then(|| check_in_url.to_owned()),
    }
}

pub fn checked_in(c: CheckedIn) -> wire::CheckInResponse {
    wire::CheckInResponse {
        edition: Some(c.edition),
        license: c.license.map(license),
        credential: c.credential.map(credential),
        next_check_in_after: c.next_check_in_after,
    }
}
