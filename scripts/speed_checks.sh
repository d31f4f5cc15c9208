#!/usr/bin/env bash
# Issue 17's open GPU measurements, one stage per device command (each fits the 10-minute limit), every
# result written under OUT (the device's $OUT) so that a machine taken back after the call loses nothing:
#   scripts/speed_checks.sh tests  OUT   the GPU kernel tests (adaLN and the MLP GEMMs) and the token-group spread
#                                        compiled on the GPU, summary in OUT/kernel_tests.txt
#   scripts/speed_checks.sh mlp    OUT   DITLAB_MLP_GEMM cublas against triton on the fused path under CUDA graphs,
#                                        DiT-S/2 and DiT-B/2, one process (OUT/mlp_gemm.jsonl, ~8 min)
#   scripts/speed_checks.sh ctx77  OUT   the 77-token context set, fast path off / on, beside plain DiT-S/2
#                                        (OUT/ctx77.jsonl, ~6 min)
#   scripts/speed_checks.sh sample OUT   sampling: eager, compiled, compiled + fused (OUT/bench_sample.jsonl, ~4 min)
#   scripts/speed_checks.sh adaln  OUT   the adaLN backward with its row loop pipelined by tl.range (DITLAB_ADALN_BWD_
#                                        LOOP_STAGES 2 / 3 / 4 against 0), kernels alone at the S/2, B/2 and superres
#                                        shapes (OUT/adaln_loop.jsonl, ~3 min); if a depth wins, time it end to end
#   scripts/speed_checks.sh loop   OUT   the same end to end: DITLAB_ADALN_BWD_LOOP_STAGES 0 against auto (each case's
#                                        winner), fast path on, CUDA graphs, DiT-S/2, DiT-B/2 and superres S/2
#                                        (OUT/loop.jsonl, ~8 min); if auto pays, make it the default
#   scripts/speed_checks.sh muon   OUT   the training step with optim.name=muon against adamw, DiT-S/2, the speedrun's
#                                        compile settings (OUT/muon.jsonl, ~4 min), and one Muon step alone, torch.optim.Muon
#                                        against BatchedMuon (OUT/muon_step.jsonl)
#   scripts/speed_checks.sh streams OUT  superres DiT-S/2, fast path off / on, its modulation spread from the streams'
#                                        runs against the indexed gather (DITLAB_TOKEN_RUNS_MAX=0, the path before
#                                        the fourteenth session) (OUT/streams.jsonl, ~8 min)
# Run from the repository root with PYTHONPATH=src. Rows are JSON lines of scripts/bench_train.py (img/s, MFU,
# peak memory; docs/performance.md reads them); compare rows of one call only (one machine, minutes apart).
set -uo pipefail
stage=${1:?usage: scripts/speed_checks.sh tests|mlp|ctx77|sample|adaln|loop|muon|streams OUT}; out=${2:?OUT folder}
mkdir -p "$out"
# An array, not a shell function: `timeout` runs programs, and a function name is none (the fifteenth session's
# first `mlp` call ended at once with "timeout: failed to run command 'bench'").
bench=(python3 scripts/bench_train.py --compile yes --repeats 3 --steps 20 --warmup 25 train.nan_check=log)
case $stage in
  tests)
    # the whole-model GPU tests first: they take ~1 min, and the kernel tests alone outlast the 570 s
    timeout 570 python3 -m pytest -p no:warnings tests/models/test_token_groups.py tests/models/test_attention_reliability.py \
      tests/models/kernels \
      > "$out/kernel_tests.txt" 2>&1
    rc=$?; tail -3 "$out/kernel_tests.txt"; exit $rc ;;
  mlp)
    timeout 560 "${bench[@]}" --arch DiT-S/2 DiT-B/2 --fast-kernels on --mlp-gemm cublas,triton \
      train.compile_mode=reduce-overhead --out "$out/mlp_gemm.jsonl" ;;
  ctx77)
    timeout 270 "${bench[@]}" --arch DiT-S/2 --fast-kernels off,on --context-tokens 77 train.compile_mode=reduce-overhead \
      --out "$out/ctx77.jsonl"
    timeout 200 "${bench[@]}" --arch DiT-S/2 --fast-kernels on train.compile_mode=reduce-overhead --out "$out/ctx77.jsonl" ;;
  sample)
    # eager is known (33 img/s on an H100, 2026-11-22 and 2026-12-06): the question is fused against compiled
    timeout 500 bash scripts/bench_sample_synthetic.sh DiT-S/2 1.5 fused,compiled > "$out/bench_sample.jsonl" ;;
  adaln)
    timeout 500 python3 scripts/bench_adaln_kernels.py --shapes S2 B2 superres_S2 --sweep --knobs BWD_LOOP_STAGES \
      --no-inductor --out "$out/adaln_loop.jsonl" ;;
  loop)
    for stages in 0 auto; do
      DITLAB_ADALN_BWD_LOOP_STAGES=$stages timeout 280 "${bench[@]}" --arch DiT-S/2 DiT-B/2 --fast-kernels on \
        train.compile_mode=reduce-overhead --out "$out/loop.jsonl"
      DITLAB_ADALN_BWD_LOOP_STAGES=$stages timeout 140 "${bench[@]}" task.kind=superres --arch DiT-S/2 \
        --fast-kernels on train.compile_mode=reduce-overhead --out "$out/loop.jsonl"
    done ;;
  muon)
    timeout 60 python3 scripts/bench_muon.py --arch DiT-S/2 DiT-B/2 --device cuda > "$out/muon_step.jsonl"
    for opt in adamw muon; do
      timeout 250 "${bench[@]}" optim.name=$opt --arch DiT-S/2 --out "$out/muon.jsonl"
    done ;;
  streams)
    for runs in 0 8; do
      DITLAB_TOKEN_RUNS_MAX=$runs timeout 275 "${bench[@]}" --arch DiT-S/2 --fast-kernels off,on task.kind=superres \
        train.compile_mode=reduce-overhead --out "$out/streams.jsonl"
    done ;;
  *)
    echo "unknown stage $stage (tests, mlp, ctx77, sample, adaln, loop, muon, streams)" >&2; exit 2 ;;
esac
