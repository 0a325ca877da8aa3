//! The seed example of Ray's tracing guide, as a wtrace task component.
//!
//! ```text
//! wtrace run --tracing-startup-hook=default hello.wasm 'my-function()'   # prints 1
//! wtrace run --tracing-startup-hook=default hello.wasm 'my-func()'       # a custom span "foo"
//! ```

wit_bindgen::generate!({
    inline: "
        package example:hello;
        world hello {
            /// Returns 1.
            export my-function: func() -> s32;
            /// Opens a custom span `foo` and prints a line inside it.
            export my-func: func();
        }
    ",
});

struct Hello;

impl Guest for Hello {
    fn my_function() -> i32 {
        1
    }

    fn my_func() {
        wtrace_guest::in_span("foo", |_span| {
            println!("hello from inside span foo");
        });
    }
}

export!(Hello);
