//! `uniffi-bindgen`, built from the same pinned uniffi as `linkbook-ffi`, so
//! generated bindings always match the library's scaffolding.
//!
//! ```sh
//! cargo build -p linkbook-ffi
//! cargo run -p linkbook-uniffi-bindgen -- generate --library \
//!     target/debug/liblinkbook_ffi.so --language kotlin --out-dir out --no-format
//! ```

fn main() {
    uniffi::uniffi_bindgen_main()
}
