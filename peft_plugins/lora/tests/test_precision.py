"""torch_dtype auto: bf16 autocast on CPUs with native bf16 (when it measures faster), float32 elsewhere."""

from __future__ import annotations

from hostkit_lora.precision import auto_precision, choose_cpu_precision, cpu_flags

AVX2_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2
"""
SAPPHIRE_RAPIDS_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
GRAVITON3_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics fphp asimdhp sve bf16 i8mm
"""


def test_flags_are_read_from_x86_and_arm_cpuinfo():
    assert "avx2" in cpu_flags(AVX2_CPUINFO) and "avx512_bf16" not in cpu_flags(AVX2_CPUINFO)
    assert {"avx512_bf16", "amx_bf16"} <= cpu_flags(SAPPHIRE_RAPIDS_CPUINFO)
    assert "bf16" in cpu_flags(GRAVITON3_CPUINFO)


def test_avx2_only_cpus_train_in_float32_without_probing():
    probed = []
    chosen = choose_cpu_precision(cpu_flags(AVX2_CPUINFO), "AVX2", lambda: probed.append(1) or 30.0)
    assert (chosen.dtype, chosen.bf16_autocast) == ("float32", False)
    assert "AVX2" in chosen.reason and "no native bf16" in chosen.reason
    assert probed == []  # the flags decide: no probe on an emulating CPU


def test_native_bf16_cpus_get_bf16_autocast_when_it_measures_faster():
    for info in (SAPPHIRE_RAPIDS_CPUINFO, GRAVITON3_CPUINFO):
        chosen = choose_cpu_precision(cpu_flags(info), "AVX512", lambda: 1.9)
        assert (chosen.dtype, chosen.bf16_autocast) == ("float32", True)  # fp32 master weights
        assert "bf16 autocast" in chosen.reason and "1.90x" in chosen.reason
    slow = choose_cpu_precision(cpu_flags(SAPPHIRE_RAPIDS_CPUINFO), "AVX512", lambda: 1.05)
    assert not slow.bf16_autocast and "1.05x" in slow.reason


def test_this_machine_decides_by_its_own_flags(tiny_llama, data_dir, run_toml):
    flags = cpu_flags()
    native = bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    chosen = auto_precision(use_gpu=False, width=64)
    assert chosen.dtype == "float32"
    if not native:
        assert not chosen.bf16_autocast and chosen.reason.startswith("float32: this CPU")
    result = run_toml(f'''
[model]
type = "HfModel"
path = "{tiny_llama}"
[data.train]
type = "jsonl"
path = "{data_dir / 'qa.jsonl'}"
text_template = "### Q: {{question}}\\n### A: {{answer}}"
max_seq_len = 32
[[passes]]
type = "LoRA"
r = 4
train_data_config = "train"
[passes.training_args]
max_steps = 2
per_device_train_batch_size = 4
[output]
dir = "out"
''')
    assert result.exit_code == 0, result.output
    notes = result.step(0)["notes"]
    assert notes["torch_dtype"] == "float32"
    if native:  # bf16 autocast, or float32 where the probe found bf16 no faster: the flags are named either way
        assert any(flag in notes["precision"] for flag in ("avx512_bf16", "amx_bf16", "bf16"))
    else:
        assert notes["precision"] == chosen.reason
