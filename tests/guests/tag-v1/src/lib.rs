//! Version 1 of the tag controller (see ../../tag.rs).

const VERSION: &str = "v1";

include!("../../tag.rs");
