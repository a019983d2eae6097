#!/bin/bash
# Steps 5-7 of docs/pragmatic-path.md on a quickstart's runs: gate and promote, roll back, lineage.
#   bash bench/pragmatic_path.sh QUICKSTART_OUT [OUT]      (QUICKSTART_OUT: what `agentrft quickstart --out` wrote)
# Writes OUT/p1..p3 (each promotion's gate.json and evals), OUT/log.txt and OUT/MODEL_CARD.md; the audit log and
# registry live in OUT/home (AGENTRFT_HOME). bench/results/pragmatic_path.json gathers one such run's figures.
set -u
QS=$(realpath "$1"); OUT=$(realpath -m "${2:-out/pragmatic-path}")
cd "$(dirname "$0")/.."
export AGENTRFT_HOME="$OUT/home"
rm -rf "$OUT"; mkdir -p "$OUT"
A=.venv/bin/agentrft
G=examples/governance/gate.yaml
t() { local s; s=$(date +%s.%N); "$@"; local rc=$?; echo "rc=$rc wall=$(echo "$(date +%s.%N) - $s" | bc)"; }
{
echo "== promote sft (first)"; t $A promote "$QS/runs/sft" --as finance-agent --gate $G --out "$OUT/p1"
echo "== promote rft";          t $A promote "$QS/runs/rft" --as finance-agent --gate $G --out "$OUT/p2"
echo "== promote sft (again)";  t $A promote "$QS/runs/sft" --as finance-agent --gate $G --out "$OUT/p3"
echo "== registry";             $A registry show finance-agent
echo "== rollback";             t $A rollback finance-agent
echo "== lineage";              t $A lineage "$QS/runs/rft" --card "$OUT/MODEL_CARD.md"
echo "== audit verify";         t $A audit verify
} 2>&1 | tee "$OUT/log.txt"
