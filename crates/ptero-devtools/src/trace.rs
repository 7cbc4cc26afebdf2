//! Chrome trace JSON (the Trace Event Format read by Perfetto and `chrome://tracing`).
//!
//! Every profile event becomes a complete event (`"ph": "X"`) on one thread, with `ts`
//! and `dur` in microseconds from the first event: a method's execution contains its
//! kernel and delegate calls, and a delegate call contains its nodes.

use alloc::string::String;
use core::fmt::Write;

use crate::recorder::{EventKind, Recorder};

/// The trace of everything `recorder` holds, as a JSON document.
///
/// ```
/// use ptero_devtools::{chrome_trace, Recorder, RecorderOptions};
/// let json = chrome_trace(&Recorder::new(RecorderOptions::default()));
/// assert!(json.starts_with("{\"traceEvents\":["));
/// ```
pub fn chrome_trace(recorder: &Recorder) -> String {
    let origin = recorder
        .runs()
        .iter()
        .flat_map(|r| r.profile.iter().map(|e| e.start_ns))
        .min()
        .unwrap_or(0);
    let mut out = String::from("{\"traceEvents\":[");
    let mut first = true;
    for (ri, run) in recorder.runs().iter().enumerate() {
        // Parents end after their children, so sorting by start (then longest first)
        // lists every event after the one containing it.
        let mut events: alloc::vec::Vec<_> = run.profile.iter().collect();
        events.sort_by(|a, b| a.start_ns.cmp(&b.start_ns).then(b.end_ns.cmp(&a.end_ns)));
        for e in events {
            let cat = match e.kind {
                EventKind::Method => "method",
                EventKind::Operator => "operator",
                EventKind::Delegate => "delegate",
                EventKind::Node => "delegate_node",
            };
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str("{\"name\":");
            json_string(&mut out, &e.name);
            let ts = e.start_ns.saturating_sub(origin) as f64 / 1e3;
            let dur = e.end_ns.saturating_sub(e.start_ns) as f64 / 1e3;
            let _ = write!(
                out,
                ",\"cat\":\"{cat}\",\"ph\":\"X\",\"ts\":{ts:.3},\"dur\":{dur:.3},\"pid\":1,\"tid\":1,\"args\":{{\"block\":{ri},\"method\":"
            );
            json_string(&mut out, &run.method);
            if let Some(c) = e.chain {
                let _ = write!(out, ",\"chain\":{c}");
            }
            if let Some(i) = e.instruction {
                let _ = write!(out, ",\"instruction\":{i}");
            }
            if let Some(h) = e.debug_handle {
                let _ = write!(out, ",\"debug_handle\":{h}");
            }
            out.push_str("}}");
        }
    }
    out.push_str("],\"displayTimeUnit\":\"ms\"}");
    out
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecorderOptions;
    use ptero_runtime::Observer;

    #[test]
    fn names_are_escaped() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn nodes_sit_inside_their_delegate_call() {
        let mut r = Recorder::new(RecorderOptions::default());
        r.run_begin("forward");
        r.delegate_begin(0, 0);
        r.node_begin(0, 0);
        r.node_end(0, 0, "Conv2d", Some(3));
        r.end(0, 0, "XnnpackBackend_0");
        r.run_end("forward");
        let json = chrome_trace(&r);
        let m = json.find("Method::execute").unwrap();
        let d = json.find("XnnpackBackend_0").unwrap();
        let n = json.find("Conv2d #1").unwrap();
        assert!(m < d && d < n, "{json}");
        assert!(json.contains("\"debug_handle\":3"));
    }
}
