//! What `#[socket_route]` promises about errors, checked by compiling
//! controllers: each mistake is a compile error pointing at the user's code
//! (the `.stderr` files hold the exact messages and spans), and a controller
//! may use the SDK's names for its own types.
//!
//! After a deliberate change of a message, `TRYBUILD=overwrite cargo test
//! -p switchyard-sdk --test macro_errors` rewrites the `.stderr` files;
//! read the diff before committing it.

#[test]
fn mistakes_are_reported_at_the_users_code() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail_*.rs");
    t.pass("tests/ui/pass_*.rs");
}
