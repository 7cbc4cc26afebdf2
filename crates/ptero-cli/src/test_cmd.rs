//! `ptero test`: run every test case of a bundled program (`.bpte`) and compare outputs.

use std::path::PathBuf;

use ptero::devtools::{compare_values, Tolerance};
use ptero::{EValue, Error};

use crate::LoadArgs;

#[derive(clap::Args, Debug)]
pub(crate) struct TestArgs {
    /// The bundled program (.bpte, from ExecuTorch's
    /// serialize_from_bundled_program_to_flatbuffer).
    model: PathBuf,
    /// Relative tolerance of float outputs (|expected - actual| <= atol + |rtol * actual|).
    #[arg(long, default_value_t = Tolerance::default().rtol)]
    rtol: f64,
    /// Absolute tolerance of float outputs.
    #[arg(long, default_value_t = Tolerance::default().atol)]
    atol: f64,
    /// Only this method's cases.
    #[arg(long)]
    method: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Why `ptero test` failed: some cases did not match (exit code 1 like any error).
fn failed(n: usize, total: usize) -> Error {
    Error::InvalidArgument(format!("{n} of {total} test cases failed"))
}

pub(crate) fn test(args: &TestArgs, load_args: &LoadArgs) -> Result<(), Error> {
    if !(args.rtol >= 0.0 && args.atol >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "--rtol {} / --atol {}: tolerances must be non-negative numbers",
            args.rtol, args.atol
        )));
    }
    let tol = Tolerance {
        rtol: args.rtol,
        atol: args.atol,
    };
    let (program, tests) = load_args.open_bundled(&args.model)?;
    let Some(suites) = tests else {
        return Err(Error::InvalidArgument(format!(
            "{} is not a bundled program (no BP08 identifier): `ptero test` needs a .bpte with test cases",
            args.model.display()
        )));
    };
    let suites: Vec<_> = suites
        .into_iter()
        .filter(|s| args.method.as_deref().is_none_or(|m| m == s.method_name))
        .collect();
    if let Some(m) = &args.method {
        if suites.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the bundled program has no test cases for method '{m}'"
            )));
        }
    }
    let (mut total, mut failures) = (0usize, 0usize);
    let mut report = Vec::new();
    for suite in &suites {
        let mut m = crate::load_with(&program, Some(&suite.method_name), load_args, true)?;
        for (ci, case) in suite.cases.iter().enumerate() {
            total += 1;
            let outcome = run_case(&mut m, &case.inputs, &case.expected_outputs, tol);
            let (pass, detail, worst) = match &outcome {
                Ok((worst, problems)) if problems.is_empty() => (true, String::new(), *worst),
                Ok((worst, problems)) => (false, problems.join("; "), *worst),
                Err(e) => (false, e.to_string(), f64::INFINITY),
            };
            if !pass {
                failures += 1;
            }
            if args.json {
                report.push(serde_json::json!({
                    "method": suite.method_name,
                    "case": ci,
                    "passed": pass,
                    "max_abs_error": if worst.is_finite() { serde_json::json!(worst) } else { serde_json::Value::Null },
                    "detail": detail,
                }));
            } else if pass {
                outln!(
                    "{} case {ci}: pass (max abs error {worst:.3e})",
                    suite.method_name
                );
            } else {
                outln!("{} case {ci}: FAIL: {detail}", suite.method_name);
            }
        }
    }
    if args.json {
        outln!(
            "{}",
            serde_json::json!({
                "model": args.model.display().to_string(),
                "rtol": tol.rtol,
                "atol": tol.atol,
                "cases": report,
                "passed": total - failures,
                "failed": failures,
            })
        );
    } else {
        outln!(
            "{} of {total} test cases passed (rtol {}, atol {})",
            total - failures,
            tol.rtol,
            tol.atol
        );
    }
    if failures > 0 {
        return Err(failed(failures, total));
    }
    Ok(())
}

/// Runs one case: the worst absolute error over its outputs, and what did not match.
fn run_case(
    m: &mut ptero::Method,
    inputs: &[EValue],
    expected: &[EValue],
    tol: Tolerance,
) -> Result<(f64, Vec<String>), Error> {
    m.set_inputs(inputs)?;
    m.execute()?;
    let outputs = m.outputs()?;
    let mut problems = Vec::new();
    if expected.is_empty() {
        problems.push("the case has no expected outputs".to_string());
    }
    if expected.len() > outputs.len() {
        problems.push(format!(
            "{} expected outputs, the method returns {}",
            expected.len(),
            outputs.len()
        ));
    }
    let mut worst = 0f64;
    for (i, (e, a)) in expected.iter().zip(&outputs).enumerate() {
        let c = compare_values(e, a, tol);
        if let Some(s) = &c.structural {
            problems.push(format!("output {i}: {s}"));
            continue;
        }
        worst = worst.max(c.max_abs_error);
        if c.mismatches > 0 {
            problems.push(format!(
                "output {i}: {} element(s) outside tolerance, worst |expected - actual| = {:.3e} at index {}",
                c.mismatches,
                c.max_abs_error,
                c.worst_index.unwrap_or(0)
            ));
        }
    }
    Ok((worst, problems))
}
