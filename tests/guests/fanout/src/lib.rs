//! Test task: nested fan-out, so one trace spans many workers.

wit_bindgen::generate!({
    inline: "
        package tests:fanout;
        world fanout {
            /// Counts the leaves of a tree of tasks `depth` levels below this
            /// one, each submitting `width` children.
            export tree: func(depth: u32, width: u32) -> result<u32, string>;
            /// Submits `function(args)` to the component with `digest`.
            export call-other: func(digest: string, function: string, args: string) -> result<string, string>;
            /// Submits itself forever, never waiting: a fork bomb.
            export fork-bomb: func() -> result<u32, string>;
            /// Submits `width` tasks that each keep a worker busy for `ms`,
            /// and waits for them: how many ran.
            export spread: func(width: u32, ms: u32) -> result<u32, string>;
            /// Keeps its worker busy for `ms`.
            export busy-for: func(ms: u32) -> u32;
        }
    ",
});

use wtrace_guest::{in_span, tasks};

struct Fanout;

impl Guest for Fanout {
    fn tree(depth: u32, width: u32) -> Result<u32, String> {
        println!("tree at depth {depth}");
        if depth == 0 {
            return Ok(in_span("leaf", |_| 1));
        }
        in_span("fan-out", |span| {
            span.set_attribute("width", width);
            let children: Vec<tasks::TaskRef> = (0..width)
                .map(|_| tasks::submit("tree", &format!("{}, {width}", depth - 1)))
                .collect::<Result<_, _>>()?;
            let mut leaves = 0;
            for child in children {
                let answer = child.get()?;
                // A child returns `result<u32, string>`: `ok(n)` in WAVE.
                let n = answer
                    .strip_prefix("ok(")
                    .and_then(|s| s.strip_suffix(')'))
                    .ok_or_else(|| format!("unexpected child result {answer}"))?;
                leaves += n.parse::<u32>().map_err(|e| e.to_string())?;
            }
            Ok(leaves)
        })
    }

    fn call_other(digest: String, function: String, args: String) -> Result<String, String> {
        tasks::submit_to(&digest, &function, &args)?.get()
    }

    fn fork_bomb() -> Result<u32, String> {
        loop {
            tasks::submit("fork-bomb", "")?;
        }
    }

    fn spread(width: u32, ms: u32) -> Result<u32, String> {
        let children: Vec<tasks::TaskRef> = (0..width)
            .map(|_| tasks::submit("busy-for", &ms.to_string()))
            .collect::<Result<_, _>>()?;
        for child in children {
            child.get()?;
        }
        Ok(width)
    }

    fn busy_for(ms: u32) -> u32 {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms.into());
        let mut turns = 0u32;
        while std::time::Instant::now() < until {
            turns = turns.wrapping_add(1);
        }
        turns
    }
}

export!(Fanout);
