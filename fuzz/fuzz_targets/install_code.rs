//! The install-code parser (typed by operators at first boot): never panics, and a
//! parsed code formats back to something that parses to the same code.
#![no_main]

use alga_protocol::{CodeId, InstallCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = CodeId::parse(text);
    if let Ok(code) = InstallCode::parse(text) {
        let again = InstallCode::parse(&code.expose_formatted()).expect("a formatted code parses");
        assert_eq!(*again.expose_formatted(), *code.expose_formatted());
    }
});
