//! Test task importing an interface no wtrace host provides.

wit_bindgen::generate!({
    inline: "
        package tests:unknown-import;
        interface gpu {
            run-kernel: func(name: string) -> u32;
        }
        world unknown-import {
            import gpu;
            export compute: func() -> u32;
        }
    ",
});

struct Task;

impl Guest for Task {
    fn compute() -> u32 {
        tests::unknown_import::gpu::run_kernel("matmul")
    }
}

export!(Task);
