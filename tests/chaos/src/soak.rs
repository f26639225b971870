//! `murmur-chaos soak`: the matrix round after round with fresh seeds, and one table of
//! them all (`soak.md`): what a claim like "20 consecutive clean rounds" is checked against.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{RUN_ALIGNMENT, RUN_COLUMNS, RunResult, run_cells};

/// Runs `round` (one matrix, into the directory it is given) `rounds` times, rewriting
/// `out/soak.md` after each; fails when any run did not pass.
pub fn soak(
    rounds: usize,
    out: &Path,
    mut round: impl FnMut(&Path) -> anyhow::Result<Vec<RunResult>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let started = Instant::now();
    let mut done: Vec<Vec<RunResult>> = Vec::new();
    for n in 1..=rounds {
        println!("\n##### round {n} of {rounds}");
        done.push(round(&out.join(format!("round-{n}")))?);
        std::fs::write(
            out.join("soak.md"),
            soak_table(&done, rounds, started.elapsed()),
        )?;
    }
    let not_passed = done.iter().flatten().filter(|r| !r.passed()).count();
    println!("soak: {}", out.join("soak.md").display());
    if not_passed > 0 {
        anyhow::bail!(
            "{not_passed} runs did not pass: see {}",
            out.join("soak.md").display()
        );
    }
    Ok(())
}

fn soak_table(done: &[Vec<RunResult>], rounds: usize, took: Duration) -> String {
    let clean = |round: &[RunResult]| round.iter().all(RunResult::passed);
    let mut longest = 0;
    let mut streak = 0;
    for round in done {
        streak = if clean(round) { streak + 1 } else { 0 };
        longest = longest.max(streak);
    }
    let mut text = format!(
        "# chaos soak\n\n{} of {rounds} rounds in {:.0} min; each round's reports in \
         round-<n>/. Clean rounds in a row: {longest} at most, {streak} at the end.\n\n\
         | round | runs | valid | INVALID | FAILED | other | clean |\n|---:|---:|---:|---:|---:|---:|---|\n",
        done.len(),
        took.as_secs_f64() / 60.0
    );
    for (i, round) in done.iter().enumerate() {
        let count = |verdict: &str| round.iter().filter(|r| r.verdict == verdict).count();
        let (valid, invalid, failed) = (count("valid"), count("INVALID"), count("FAILED"));
        let _ = writeln!(
            text,
            "| {} | {} | {valid} | {invalid} | {failed} | {} | {} |",
            i + 1,
            round.len(),
            round.len() - valid - invalid - failed,
            if clean(round) { "yes" } else { "**no**" }
        );
    }
    let _ = write!(
        text,
        "\n## Every run\n\n| round | {RUN_COLUMNS}\n|---:|{RUN_ALIGNMENT}\n"
    );
    for (i, round) in done.iter().enumerate() {
        for r in round {
            let _ = writeln!(text, "| {} | {}", i + 1, run_cells(r));
        }
    }
    let failures: Vec<(usize, &RunResult)> = done
        .iter()
        .enumerate()
        .flat_map(|(i, round)| round.iter().map(move |r| (i + 1, r)))
        .filter(|(_, r)| !r.passed())
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(text, "\n## Runs that did not pass\n");
        for (round, r) in failures {
            let _ = writeln!(
                text,
                "- round {round}, {} on {} nodes, seed {}: {} — {}\n  reproduce: `{}`",
                r.nemesis,
                r.nodes,
                r.seed,
                r.verdict,
                r.reasons.join("; "),
                r.reproduce
            );
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(nemesis: &str, verdict: &str) -> RunResult {
        RunResult {
            nemesis: nemesis.into(),
            seed: 7,
            nodes: 3,
            seconds: 30,
            acknowledged: 100,
            lost: usize::from(verdict == "INVALID"),
            duplicated: 0,
            published_twice: 0,
            reordered: 0,
            unexpected: 0,
            detection_s: Some(4.2),
            convergence_s: Some(0.1),
            verdict: verdict.into(),
            reasons: if verdict == "valid" {
                Vec::new()
            } else {
                vec!["1 lost".into()]
            },
            reproduce: format!("murmur-chaos run --nemesis {nemesis} --seed 7"),
        }
    }

    #[test]
    fn the_table_counts_verdicts_per_round_and_the_clean_streaks() {
        let rounds = vec![
            vec![run("kill", "valid"), run("split", "valid")],
            vec![run("kill", "valid"), run("split", "INVALID")],
            vec![run("kill", "valid"), run("split", "valid")],
            vec![run("kill", "valid"), run("split", "valid")],
        ];
        let table = soak_table(&rounds, 5, Duration::from_secs(600));
        assert!(table.contains("4 of 5 rounds in 10 min"), "{table}");
        assert!(
            table.contains("Clean rounds in a row: 2 at most, 2 at the end."),
            "{table}"
        );
        assert!(
            table.contains("| 2 | 2 | 1 | 1 | 0 | 0 | **no** |"),
            "{table}"
        );
        assert!(
            table.contains("- round 2, split on 3 nodes, seed 7: INVALID — 1 lost"),
            "{table}"
        );
        assert_eq!(table.matches("| valid |\n").count(), 7, "every run listed");
    }
}
