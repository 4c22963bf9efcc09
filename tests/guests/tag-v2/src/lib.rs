//! Version 2 of the tag controller (see ../../tag.rs).

const VERSION: &str = "v2";

include!("../../tag.rs");
