//! The gateway's CSR handling (PEM text from appliances): never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(csr) = alga_gateway::flows::csr::Csr::parse(text) {
        let _ = csr.fingerprint();
    }
    // The DER inside an arbitrary PEM wrapper, too.
    let wrapped = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        text
    );
    let _ = alga_gateway::flows::csr::Csr::parse(&wrapped);
});
