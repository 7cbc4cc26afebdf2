//! A short in-process run of the fuzzer, so `cargo test` catches a panic on hostile input
//! (the supervisor's watchdog and memory limit run in `.ci/run`).

use ptero_fuzz::Fuzzer;

#[test]
fn hostile_cases_end_in_errors_not_panics() {
    let fuzzer = Fuzzer::new(7, None);
    assert!(fuzzer.signatures().len() > 200, "kernel signatures learned");
    assert!(fuzzer.num_fixtures() > 5, "committed fixtures found");
    assert!(
        fuzzer.num_bundled() >= 3,
        "committed bundled programs found"
    );
    let mut kinds = [0usize; 6];
    let mut errors = 0;
    for index in 0..3000 {
        let case = fuzzer.case(index);
        kinds[case.kind as usize] += 1;
        let outcome = std::panic::catch_unwind(|| fuzzer.run_case(&case));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                assert!(!e.to_string().is_empty());
            }
            Err(_) => panic!(
                "case {index} ({}, {:?}) panicked; replay it with ptero-fuzz --replay",
                case.kind.name(),
                case.op
            ),
        }
    }
    assert!(
        kinds.iter().all(|&k| k > 0),
        "every kind of case ran: {kinds:?}"
    );
    assert!(errors > 100, "hostile cases are mostly rejected");
}

#[test]
fn damaged_bundled_programs_end_in_errors_and_intact_ones_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let kernels = ptero_kernels::portable();
    let limits = ptero_runtime::Limits::default();
    let good = std::fs::read(root.join("devtools/bundled/model.bpte")).unwrap();
    assert_eq!(ptero_fuzz::run_bundled(&good, &kernels, limits), Ok(()));
    let bad = std::fs::read(root.join("devtools/bundled/bad.bpte")).unwrap();
    let e = ptero_fuzz::run_bundled(&bad, &kernels, limits).unwrap_err();
    assert!(e.contains("1 test case"), "{e}");

    let fuzzer = Fuzzer::new(11, None).only(Some(ptero_fuzz::CaseKind::Bundled));
    let mut errors = 0;
    for index in 0..400 {
        let case = fuzzer.case(index);
        assert_eq!(case.kind, ptero_fuzz::CaseKind::Bundled);
        match std::panic::catch_unwind(|| fuzzer.run_case(&case)) {
            Ok(r) => errors += r.is_err() as usize,
            Err(_) => panic!("bundled case {index} panicked; replay it with ptero-fuzz --replay"),
        }
    }
    assert!(
        errors > 50,
        "damaged bundled programs are mostly rejected ({errors})"
    );
}

#[test]
fn cases_are_deterministic() {
    let a = Fuzzer::new(3, None);
    let b = Fuzzer::new(3, None);
    for index in [0, 1, 99, 12345] {
        assert_eq!(a.case(index).bytes, b.case(index).bytes);
    }
    assert_ne!(a.case(5).bytes, Fuzzer::new(4, None).case(5).bytes);
}

/// Programs the fuzzer once crashed on (kernel bugs caught by the element-extent debug
/// assertion), each now a clean error naming the cause.
#[test]
fn past_crashes_end_in_clean_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let kernels = ptero_kernels::portable();
    let cases = [
        ("topk_out_is_input.pte", "topk: an out tensor is the input"),
        (
            "nonzero_out_is_input.pte",
            "nonzero: the out tensor is the input",
        ),
    ];
    for (file, want) in cases {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let err = ptero_fuzz::run_program(&bytes, &kernels, ptero_runtime::Limits::default())
            .expect_err(file)
            .to_string();
        assert!(err.contains(want), "{file}: {err}");
    }
}
