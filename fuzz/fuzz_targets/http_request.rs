//! Fuzz the HTTP listener's reading of a request head and of the token in its `Authorization`
//! header (Bearer, or Basic in base64): every byte an HTTP client sends before the answer goes
//! through them. Run: `cargo +nightly fuzz run http_request` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(head) = brook::server::http::parse_head(data) {
        assert!(!head.method.is_empty() && !head.path.contains('?'));
        if let Some(value) = head.authorization {
            let _ = brook::auth::http_token_given(value);
        }
    }
});
