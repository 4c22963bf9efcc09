//! A valid component that targets some other world: the host must refuse it
//! with an error naming the file, and keep serving the good modules.

wit_bindgen::generate!({
    inline: "
        package test:other;
        world other {
            export run: func() -> string;
        }
    ",
});

struct Other;

impl Guest for Other {
    fn run() -> String {
        "not a controller".to_owned()
    }
}

export!(Other);
