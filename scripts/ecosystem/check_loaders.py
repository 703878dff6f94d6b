#!/usr/bin/env python3
"""Loads llmq's quantized checkpoints with the ecosystem's own loaders and compares (issue #7).

Input: a manifest (TSV, written by scripts/ecosystem/run.sh) naming, per checkpoint, the
quantized directory, llmq's own dequantization of it (`llmq dequantize --dtype f32` and in the
format's dtype), llmq's CPU-forward logits of one window (`llmq eval --logits-out`) and those of
the float source model. Output: docs/compat/loaders.json and loaders.md (the record; nothing in
it is typed by hand).

Checks (every weight comparison is bit for bit: max |diff| must be 0):
  compressed-tensors (fp8, int8, w4a16):
    - transformers AutoModelForCausalLM.from_pretrained on the directory as written (no key
      renaming, no config edits), float32 and the checkpoint's bfloat16;
    - every tensor of the loaded model (decompressed by compressed-tensors on the first
      forward) == llmq dequantize (f32 resp. bf16);
    - logits of the loaded model (its own activation quantization on for W8A8) vs llmq's,
      within the tolerance derived below; for W8A8 also with the loader's activation
      quantizer swapped for vLLM's (the one llmq emulates), as a diagnostic.
  AutoAWQ GEMM: AutoAWQ's dequantize_gemm (and GPTQModel's copy of it) on the stored tensors,
    in its own fp16 arithmetic (== llmq --dtype f16) and with float32 scales (== llmq f32);
    transformers' AWQ integration (gptqmodel kernels) on CPU: load, weights, logits.
  GPTQ v1: AutoGPTQ's QuantLinear torch path (module file imported directly: the auto_gptq
    package itself no longer imports under transformers 5) and GPTQModel's torch dequant (after
    its own v1 -> v2 zero-point conversion), fp16 and float32; transformers' GPTQ integration
    (optimum + gptqmodel) on CPU: load, weights, logits.

Tolerances for logits (same model as tests/test_model.cc f32_order_tolerance): a relative
perturbation r_s of the input or weights of stage s moves the logits by about r_s * max|logit|;
RMSNorm renormalises every block, so independent stages add in quadrature, and the factor 2
covers two independent computations:
    tol = 2 * max|logit| * sqrt((2L+1) * K * eps32^2 + sum_s r_s^2)
with L layers, K = max(hidden, intermediate), eps32 = 2^-23 (float32 summation order). The r_s
are measured, not guessed:
  - W8A8 (loader's activation quantizer on): for every quantized linear's input x_t (captured in
    the loader's forward), r = ||Q_loader(x_t) - Q_vllm(x_t)|| / ||x_t|| (the two activation
    grids: compressed-tensors scales by amax/448 resp. amax/127.5, vLLM's kernels by
    max(amax/448, 1/(448*512)) resp. amax/127), plus the elements that may round the other way
    because llmq's and the loader's activations differ by float32 noise (v = x/s within
    2 * rho * |v| of a rounding boundary, rho = 2 sqrt((2L+1) K) eps32): their one-step
    changes, in quadrature; r_s = max over tokens.
  - weights rounded to fp16 by a loader's kernel (gptqmodel on CPU): r = ||W_f16 - W|| / ||W||
    per quantized linear, from llmq's f32 and f16 dequantizations.
  - weight-only compressed-tensors: no r_s (the loader's weights are llmq's, bit for bit).
A logits check is also two-sided: its tolerance must be below the quantization effect itself
(max |logits_llmq(quantized) - logits_llmq(float source)|), else it could not tell the quantized
model from the float one; the record says when it cannot.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import platform
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

EPS32 = 2.0**-23
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# ---- checkpoint access ------------------------------------------------------------------------

class Tensors:
    """Every tensor of a checkpoint directory (sharded or not), read lazily."""

    def __init__(self, d: str):
        self.dir = Path(d)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = ["model.safetensors"]
        self.where: dict[str, str] = {}
        self.handles = {}
        for f in files:
            h = safe_open(str(self.dir / f), framework="pt")
            self.handles[f] = h
            for k in h.keys():
                self.where[k] = f

    def names(self):
        return sorted(self.where)

    def __contains__(self, name):
        return name in self.where

    def get(self, name) -> torch.Tensor:
        return self.handles[self.where[name]].get_tensor(name)


def read_config(d: str) -> dict:
    return json.loads((Path(d) / "config.json").read_text())


def linear_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or h // heads
    return {"self_attn.q_proj": (heads * hd, h), "self_attn.k_proj": (kv * hd, h), "self_attn.v_proj": (kv * hd, h),
            "self_attn.o_proj": (h, heads * hd), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
            "mlp.down_proj": (h, inter)}


def quantized_linears(cfg: dict, t: Tensors):
    """(prefix, out, in) of every linear stored quantized."""
    shapes = linear_shapes(cfg)
    for i in range(cfg["num_hidden_layers"]):
        for m in LINEARS:
            p = f"model.layers.{i}.{m}"
            if p + ".weight" in t and t.get(p + ".weight").dtype in (torch.bfloat16, torch.float16, torch.float32):
                continue
            yield p, shapes[m][0], shapes[m][1]


# ---- comparison helpers -------------------------------------------------------------------------

class Diff:
    """Accumulates max |a - b| and the count of unequal elements over many tensors."""

    def __init__(self):
        self.max_abs = 0.0
        self.mismatched = 0
        self.numel = 0
        self.tensors = 0
        self.worst = ""
        self.problems: list[str] = []

    def add(self, name: str, got: torch.Tensor, want: torch.Tensor):
        self.tensors += 1
        if tuple(got.shape) != tuple(want.shape):
            self.problems.append(f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}")
            return
        g, w = got.detach().to(torch.float32), want.detach().to(torch.float32)
        if not torch.isfinite(g).all():
            self.problems.append(f"{name}: non-finite values in the loader's tensor")
        d = (g - w).abs()
        m = float(d.max()) if d.numel() else 0.0
        bad = int((g != w).sum())
        self.numel += g.numel()
        self.mismatched += bad
        if bad and (m > self.max_abs or not self.worst):
            self.worst = name
        self.max_abs = max(self.max_abs, m)

    def row(self, **kw):
        ok = not self.problems and self.mismatched == 0 and self.tensors > 0
        note = "; ".join(self.problems[:3])
        if self.mismatched:
            note = (note + "; " if note else "") + f"{self.mismatched} of {self.numel} elements differ, worst in {self.worst}"
        if self.tensors == 0:
            note = "no tensors compared"
        return dict(kw, max_abs=self.max_abs, tol=0.0, tensors=self.tensors, numel=self.numel,
                    mismatched=self.mismatched, result="pass" if ok else "FAIL", note=note)


def f32_order_term(cfg: dict) -> float:
    L, K = cfg["num_hidden_layers"], max(cfg["hidden_size"], cfg["intermediate_size"])
    return (2 * L + 1) * K * EPS32 * EPS32


def logit_tolerance(cfg: dict, max_logit: float, stage_r2: float) -> float:
    return 2.0 * max_logit * math.sqrt(f32_order_term(cfg) + stage_r2)


def logits_row(case, check, reference, got: torch.Tensor, want: torch.Tensor, tol: float, effect: float, note=""):
    d = (got.float() - want.float()).abs()
    max_abs = float(d.max())
    top1 = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    finite = bool(torch.isfinite(got).all())
    discriminates = tol < effect
    ok = finite and max_abs <= tol
    extra = f"top-1 agreement {top1:.4f}; quantization effect {effect:.4g}"
    if not discriminates:
        extra += " (tolerance >= quantization effect: this check cannot tell the quantized model from the float one)"
    if not finite:
        extra += "; non-finite logits"
    return dict(model=case["model"], checkpoint=case["name"], format=case["format"], check=check, reference=reference,
                max_abs=max_abs, tol=tol, quant_effect=effect, top1=top1, discriminates=discriminates,
                result="pass" if ok else "FAIL", note=(note + "; " if note else "") + extra)


# Known loader failures, explained in the record when their signature appears.
KNOWN_ERRORS = (
    ("actorder='group' has been removed",
     "compressed-tensors removed actorder \"group\" (weight_g_idx) in vllm-project/compressed-tensors PR #840 "
     "(Aug 2026): a pack-quantized checkpoint with act-order g_idx no longer parses (formats.md 0.2.2 / C.5 predate "
     "this); GPTQ v1 with desc_act true is the act-order format that still loads"),
    ("ignore_mismatched_sizes",
     "transformers + compressed-tensors allocate weight_zero_point unpacked [out, G] when they build the compressed "
     "module on the meta device (PackedQuantizationCompressor.compress skips zero-point packing for meta weights), "
     "while the file holds the packed [out/8, G] that compressed-tensors' own compress() writes and decompress() "
     "reads (the decompress check above is bit-exact): an asymmetric pack-quantized checkpoint from any writer fails "
     "to load this way; a loader bug, not a format difference"),
)


def error_row(case, check, reference, exc: BaseException):
    text = str(exc)
    msg = f"{type(exc).__name__}: {text.strip().splitlines()[0] if text.strip() else ''}"[:300]
    result = "error"
    for signature, why in KNOWN_ERRORS:
        if signature in text:
            msg += f" -- {why}"
            result = "known issue"
    return dict(model=case["model"], checkpoint=case["name"], format=case["format"], check=check, reference=reference,
                max_abs=None, tol=None, result=result, note=msg)


def load_checked(case, ref, rows):
    """from_pretrained in float32 as the first check of a case: a row saying whether the load
    reported missing / unexpected / mismatched keys, or why it failed (then None)."""
    check = "load (from_pretrained, float32)"
    try:
        model, problems = load_hf(case["ckpt"], torch.float32)
    except Exception as e:  # the load itself is the check: record why it failed
        rows.append(error_row(case, check, ref, e))
        return None
    rows.append(dict(model=case["model"], checkpoint=case["name"], format=case["format"],
                     check=check, reference=ref, max_abs=None, tol=None,
                     result="FAIL" if problems else "pass",
                     note=json.dumps(problems)[:300] if problems else "no missing / unexpected / mismatched keys"))
    return model


@contextlib.contextmanager
def quiet():
    """Silences the loaders' progress bars and banners (they go to stdout/stderr)."""
    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        yield


def version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- activation quantizers (for the W8A8 tolerance and the diagnostic) --------------------------

def fp8_round(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).to(torch.float32)


def vllm_quant(x: torch.Tensor, kind: str):
    """vLLM's dynamic per-token quantizers (what llmq's W8A8Linear emulates): codes on the grid,
    per-token scale. x: [T, K] float32."""
    amax = x.abs().amax(dim=-1, keepdim=True)
    if kind == "fp8":
        s = torch.clamp(amax / 448.0, min=1.0 / (448.0 * 512.0))
        return fp8_round(x / s), s
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return torch.round((x * inv).clamp(-128.0, 127.0)), s


def grid_round(v: torch.Tensor, kind: str) -> torch.Tensor:
    return fp8_round(v) if kind == "fp8" else torch.round(v.clamp(-128.0, 127.0))


def act_stage_r2(x: torch.Tensor, ct_deq: torch.Tensor, kind: str, rho: float) -> tuple[float, float, int]:
    """(r_grid^2 + r_flip^2 maximised over tokens, max r_grid, potential flips) for one linear's input."""
    x = x.reshape(-1, x.shape[-1]).float()
    q, s = vllm_quant(x, kind)
    vllm_deq = q * s
    norm = x.norm(dim=-1).clamp_min(1e-30)
    r_grid = (ct_deq.reshape(x.shape).float() - vllm_deq).norm(dim=-1) / norm
    v = x / s
    # float32 noise is relative to each element (the model behind f32_order_tolerance); the
    # factor 2 covers the token scale, which carries the same relative noise.
    eps_v = 2.0 * rho * v.abs()
    lo, hi = grid_round(v - eps_v, kind), grid_round(v + eps_v, kind)
    flip_step = (hi - lo).abs() * s
    r_flip = flip_step.norm(dim=-1) / norm
    r2 = (r_grid**2 + r_flip**2).max()
    return float(r2), float(r_grid.max()), int((hi != lo).sum())


# ---- compressed-tensors through transformers ---------------------------------------------------

def ct_kind(cfg: dict) -> str | None:
    """'fp8' / 'int8' for W8A8 checkpoints, None for weight-only."""
    qc = cfg["quantization_config"]
    for g in qc.get("config_groups", {}).values():
        ia = g.get("input_activations")
        if ia:
            return "fp8" if ia.get("type") == "float" else "int8"
    return None


def load_hf(d: str, dtype):
    from transformers import AutoModelForCausalLM
    with quiet():
        model, info = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, output_loading_info=True)
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    return model, problems


def compare_model_tensors(model, deq: Tensors) -> Diff:
    diff = Diff()
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    for name in deq.names():
        if name not in params:
            diff.problems.append(f"{name}: not in the loaded model")
            continue
        diff.add(name, params[name], deq.get(name))
    return diff


def check_ct_decompress(case, cfg, rows):
    """compressed-tensors' own compressor for the format, decompress() on each linear's stored
    tensors (the loader's weight reconstruction without transformers around it)."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationScheme
    qc = cfg["quantization_config"]
    ref = f"compressed-tensors {version('compressed-tensors')} {qc['format']} compressor .decompress()"
    try:
        scheme = QuantizationScheme.model_validate(next(iter(qc["config_groups"].values())))
        compressor = BaseCompressor.load_from_registry(qc["format"])
    except Exception as e:
        rows.append(error_row(case, "parse quantization_config (QuantizationScheme)", ref, e))
        return
    t = Tensors(case["ckpt"])
    names = t.names()
    for dtype, deq, tag in ((None, Tensors(case["deq_native"]), "stored scale dtype (bf16 arithmetic) == llmq --dtype bf16"),
                            (torch.float32, Tensors(case["deq_f32"]), "float32 scales == llmq --dtype f32")):
        diff = Diff()
        for p, out, inn in quantized_linears(cfg, t):
            sd = {n[len(p) + 1:]: t.get(n) for n in names if n.startswith(p + ".")}
            if dtype is not None:
                sd["weight_scale"] = sd["weight_scale"].to(dtype)
            with quiet():
                w = compressor.decompress(sd, scheme)["weight"]
            diff.add(p, w, deq.get(p + ".weight"))
        rows.append(diff.row(model=case["model"], checkpoint=case["name"], format=case["format"],
                             check=f"decompressed weights, {tag}", reference=ref))


def check_compressed_tensors(case, cfg, rows, env):
    import compressed_tensors.quantization.lifecycle.forward as ct_forward
    ref = f"transformers {version('transformers')} + compressed-tensors {version('compressed-tensors')}"
    check_ct_decompress(case, cfg, rows)
    llmq = load_file(case["logits"])
    src = load_file(case["source_logits"])
    ids = llmq["input_ids"].unsqueeze(0)
    want = llmq["logits"]
    effect = float((want - src["logits"]).abs().max())
    kind = ct_kind(cfg)
    L, K = cfg["num_hidden_layers"], max(cfg["hidden_size"], cfg["intermediate_size"])
    rho = 2.0 * math.sqrt((2 * L + 1) * K) * EPS32

    model = load_checked(case, ref, rows)
    if model is None:
        return

    # Capture each quantized linear's input and the loader's own fake-quantized version of it.
    captured = {}
    hooks = []
    for name, mod in model.named_modules():
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None or scheme.input_activations is None or not name.endswith(("q_proj", "o_proj", "gate_proj", "down_proj")):
            continue

        def pre(m, args, name=name):
            x = args[0].detach()
            captured[name] = (x.clone(), ct_forward.forward_quantize(m, x, "input", m.quantization_scheme.input_activations).detach())
        hooks.append(mod.register_forward_pre_hook(pre))
    with torch.no_grad(), quiet():
        got = model(ids).logits[0].float()
    for h in hooks:
        h.remove()

    deq32 = Tensors(case["deq_f32"])
    rows.append(compare_model_tensors(model, deq32).row(
        model=case["model"], checkpoint=case["name"], format=case["format"],
        check="weights after load (float32) == llmq dequantize --dtype f32", reference=ref))

    stage_r2, note = 0.0, "weight-only: float32 summation order only"
    if kind:
        r_grid_max, flips = 0.0, 0
        for name, (x, qx) in captured.items():
            r2, rg, nf = act_stage_r2(x, qx, kind, rho)
            stage_r2 += r2
            r_grid_max = max(r_grid_max, rg)
            flips += nf
        note = (f"activation grids differ by up to r={r_grid_max:.3g} per token; {flips} elements within float32 "
                f"noise of a rounding boundary; {len(captured)} quantized inputs")
    tol = logit_tolerance(cfg, float(want.abs().max()), stage_r2)
    label = "logits vs llmq eval" + (" (loader's activation quantization on)" if kind else "")
    rows.append(logits_row(case, label, ref, got, want, tol, effect, note))

    if kind:
        # Diagnostic: the loader's model with its activation quantizer replaced by vLLM's.
        original = ct_forward.forward_quantize

        def vllm_forward_quantize(module, value, base_name, args):
            if base_name != "input":
                return original(module, value, base_name, args)
            shape = value.shape
            q, s = vllm_quant(value.reshape(-1, shape[-1]).float(), kind)
            return (q * s).reshape(shape).to(value.dtype)

        ct_forward.forward_quantize = vllm_forward_quantize
        try:
            with torch.no_grad(), quiet():
                got2 = model(ids).logits[0].float()
        finally:
            ct_forward.forward_quantize = original
        flip_r2 = 0.0
        for name, (x, _) in captured.items():
            q, s = vllm_quant(x.reshape(-1, x.shape[-1]).float(), kind)
            r2, _, _ = act_stage_r2(x, q * s, kind, rho)
            flip_r2 += r2
        tol2 = logit_tolerance(cfg, float(want.abs().max()), flip_r2)
        rows.append(logits_row(case, "logits vs llmq eval, loader's activation quantizer swapped for vLLM's (diagnostic)",
                               ref, got2, want, tol2, effect, "same weights, vLLM's per-token grid"))
    del model, captured
    gc.collect()

    # The checkpoint's own dtype (bfloat16): weights decompressed in bf16 arithmetic.
    try:
        model, problems = load_hf(case["ckpt"], torch.bfloat16)
        with torch.no_grad(), quiet():
            model(ids[:, :1])
        rows.append(compare_model_tensors(model, Tensors(case["deq_native"])).row(
            model=case["model"], checkpoint=case["name"], format=case["format"],
            check="weights after load (bfloat16) == llmq dequantize --dtype bf16", reference=ref))
        del model
    except Exception as e:
        rows.append(error_row(case, "weights after load (bfloat16)", ref, e))


# ---- AWQ / GPTQ reference dequantizers ----------------------------------------------------------

def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    with quiet():
        spec.loader.exec_module(mod)
    return mod


def awq_refs():
    """(label, dequantize_gemm) of every AutoAWQ-layout reference that imports."""
    refs, errors = [], []
    try:
        with quiet():
            from awq.utils.packing_utils import dequantize_gemm
        refs.append((f"AutoAWQ {version('autoawq')} awq.utils.packing_utils.dequantize_gemm", dequantize_gemm))
    except Exception as e:
        errors.append(("AutoAWQ", e))
    try:
        with quiet():
            from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm as g_dequantize_gemm
        refs.append((f"GPTQModel {version('gptqmodel')} quantization.awq.utils.packing_utils.dequantize_gemm",
                     g_dequantize_gemm))
    except Exception as e:
        errors.append(("GPTQModel (AWQ)", e))
    return refs, errors


def check_awq(case, cfg, rows, env):
    qc = cfg["quantization_config"]
    group = qc.get("group_size", qc.get("q_group_size"))
    t = Tensors(case["ckpt"])
    deq32, deq16 = Tensors(case["deq_f32"]), Tensors(case["deq_native"])
    refs, errors = awq_refs()
    for lib, e in errors:
        rows.append(error_row(case, "import", lib, e))
    for label, dequantize_gemm in refs:
        for scale_dtype, deq, tag in ((torch.float16, deq16, "fp16 (its own arithmetic) == llmq --dtype f16"),
                                      (torch.float32, deq32, "float32 scales == llmq --dtype f32")):
            diff = Diff()
            for p, out, inn in quantized_linears(cfg, t):
                w = dequantize_gemm(t.get(p + ".qweight"), t.get(p + ".qzeros"), t.get(p + ".scales").to(scale_dtype), 4, group)
                diff.add(p, w.t(), deq.get(p + ".weight"))  # reference gives [in, out]
            rows.append(diff.row(model=case["model"], checkpoint=case["name"], format=case["format"],
                                 check=f"dequantized weights, {tag}", reference=label))
    check_hf_int4(case, cfg, rows, f"transformers {version('transformers')} AWQ integration (gptqmodel "
                  f"{version('gptqmodel')} kernels)")


class MatmulTap:
    """Stands in for the torch module inside one imported module file: records the right-hand
    operand of torch.matmul (the dequantized weight QuantLinear's torch path builds) and returns
    zeros; everything else is torch itself."""

    def __init__(self):
        self.weight = None

    def __getattr__(self, name):
        return getattr(torch, name)

    def matmul(self, a, b):
        self.weight = b
        return torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)


def autogptq_qlinear_module():
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise ImportError("auto_gptq is not installed")
    root = Path(spec.submodule_search_locations[0])
    # The package __init__ imports transformers.modeling_utils.no_init_weights (gone in
    # transformers 5); the QuantLinear module file only needs torch and transformers.
    return import_file("autogptq_qlinear_cuda", root / "nn_modules" / "qlinear" / "qlinear_cuda.py")


def gptqmodel_dequant(qweight, qzeros, scales, g_idx, group, sym, desc_act, inn, out):
    from gptqmodel.nn_modules.qlinear import PackableQuantLinear
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
    with quiet():
        m = TorchLinear(bits=4, group_size=group, sym=sym, desc_act=desc_act, in_features=inn, out_features=out,
                        bias=False, pack_dtype=torch.int32)
        m.qweight.data = qweight.clone()
        m.qzeros.data = qzeros.clone()
        m.scales.data = scales.clone()
        m.g_idx.data = g_idx.clone()
        # GPTQModel computes with v2 zero points: it converts v1 checkpoints on load.
        convert_gptq_v1_to_v2_format_module(m, bits=4, pack_dtype=torch.int32)
        m.eval()
        w = PackableQuantLinear.dequantize_weight(m)
    return w  # [in, out]


def check_gptq(case, cfg, rows, env):
    qc = cfg["quantization_config"]
    group, sym, desc_act = qc["group_size"], qc.get("sym", True), qc.get("desc_act", False)
    t = Tensors(case["ckpt"])
    deq32, deq16 = Tensors(case["deq_f32"]), Tensors(case["deq_native"])
    modes = ((torch.float16, deq16, "fp16 (its own arithmetic) == llmq --dtype f16"),
             (torch.float32, deq32, "float32 scales == llmq --dtype f32"))
    # AutoGPTQ: QuantLinear's torch path (no CUDA extension) dequantizes the whole weight and
    # multiplies; the tap hands over that weight as it is.
    try:
        qmod = autogptq_qlinear_module()
        QuantLinear, tap = qmod.QuantLinear, MatmulTap()
        qmod.torch = tap
        label = f"AutoGPTQ {version('auto-gptq')} qlinear_cuda.QuantLinear (torch path)"
        for dtype, deq, tag in modes:
            diff = Diff()
            for p, out, inn in quantized_linears(cfg, t):
                with quiet():
                    m = QuantLinear(4, group, inn, out, False, weight_dtype=dtype)
                m.qweight.copy_(t.get(p + ".qweight"))
                m.qzeros.copy_(t.get(p + ".qzeros"))
                m.scales.copy_(t.get(p + ".scales").to(dtype))
                m.g_idx.copy_(t.get(p + ".g_idx"))
                with torch.no_grad():
                    m(torch.zeros(1, inn, dtype=dtype))
                diff.add(p, tap.weight.t(), deq.get(p + ".weight"))  # the tap holds [in, out]
            rows.append(diff.row(model=case["model"], checkpoint=case["name"], format=case["format"],
                                 check=f"dequantized weights, {tag}", reference=label))
    except Exception as e:
        rows.append(error_row(case, "AutoGPTQ QuantLinear", f"AutoGPTQ {version('auto-gptq')}", e))
    # GPTQModel: its torch dequantizer after its own v1 -> v2 conversion.
    try:
        label = f"GPTQModel {version('gptqmodel')} TorchLinear dequantize_weight (v1 -> v2 on load)"
        for dtype, deq, tag in modes:
            diff = Diff()
            for p, out, inn in quantized_linears(cfg, t):
                w = gptqmodel_dequant(t.get(p + ".qweight"), t.get(p + ".qzeros"), t.get(p + ".scales").to(dtype),
                                      t.get(p + ".g_idx"), group, sym, desc_act, inn, out)
                diff.add(p, w.t(), deq.get(p + ".weight"))
            rows.append(diff.row(model=case["model"], checkpoint=case["name"], format=case["format"],
                                 check=f"dequantized weights, {tag}", reference=label))
    except Exception as e:
        rows.append(error_row(case, "GPTQModel dequantize", f"GPTQModel {version('gptqmodel')}", e))
    check_hf_int4(case, cfg, rows, f"transformers {version('transformers')} GPTQ integration (optimum "
                  f"{version('optimum')} + gptqmodel {version('gptqmodel')} kernels)")


def check_hf_int4(case, cfg, rows, ref):
    """transformers' own AWQ / GPTQ integration on CPU (float32 activations): load, the kernels'
    dequantized weights, logits."""
    model = load_checked(case, ref, rows)
    if model is None:
        return
    llmq = load_file(case["logits"])
    src = load_file(case["source_logits"])
    want = llmq["logits"]
    effect = float((want - src["logits"]).abs().max())
    with torch.no_grad(), quiet():
        got = model(llmq["input_ids"].unsqueeze(0)).logits[0].float()
    t = Tensors(case["ckpt"])
    deq32, deq16 = Tensors(case["deq_f32"]), Tensors(case["deq_native"])
    diff, kernels = Diff(), set()
    weight_r2 = 0.0
    modules = dict(model.named_modules())
    for p, out, inn in quantized_linears(cfg, t):
        m = modules.get(p)
        if m is None or not hasattr(m, "dequantize_weight"):
            diff.problems.append(f"{p}: no quantized module with dequantize_weight")
            continue
        kernels.add(type(m).__name__)
        with torch.no_grad(), quiet():
            w = m.dequantize_weight().t()
        exact = deq32.get(p + ".weight")
        want_w = deq16.get(p + ".weight") if w.dtype == torch.float16 else exact
        diff.add(p, w, want_w)
        weight_r2 += float(((w.float() - exact).norm() / exact.norm().clamp_min(1e-30)) ** 2)
    rows.append(diff.row(model=case["model"], checkpoint=case["name"], format=case["format"],
                         check="kernel's dequantized weights == llmq dequantize (dtype of the kernel: " +
                               ("fp16" if diff.tensors and w.dtype == torch.float16 else "float32") + ")",
                         reference=ref + " [" + ", ".join(sorted(kernels)) + "]"))
    # Non-quantized tensors (embeddings, norms, lm_head) as loaded.
    params = dict(model.named_parameters(remove_duplicate=False))
    other = Diff()
    for name in deq32.names():
        if any(name.startswith(p + ".") for p, _, _ in quantized_linears(cfg, t)):
            continue
        if name in params:
            other.add(name, params[name], deq32.get(name))
        else:
            other.problems.append(f"{name}: not in the loaded model")
    rows.append(other.row(model=case["model"], checkpoint=case["name"], format=case["format"],
                          check="non-quantized tensors after load (float32) == llmq dequantize --dtype f32", reference=ref))
    tol = logit_tolerance(cfg, float(want.abs().max()), weight_r2)
    rows.append(logits_row(case, "logits vs llmq eval (float32 activations)", ref, got, want, tol, effect,
                           f"kernel rounds weights to fp16: sum r^2 = {weight_r2:.3g} over {diff.tensors} linears"))
    del model


# ---- the record -----------------------------------------------------------------------------------

def fmt_num(v):
    if v is None:
        return "-"
    if v == 0:
        return "0"
    return f"{v:.3g}"


def write_record(record: dict, out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loaders.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = ["# Ecosystem loader check (generated)", "",
             "Written by `scripts/ecosystem/check_loaders.py` (driver `scripts/ecosystem/run.sh`); do not edit by "
             "hand. Every weight check is bit for bit (tolerance 0, compared as float32); logits tolerances are "
             "derived in the script's docstring and summarised below.", "",
             "Command:", "", "```sh", record["command"], "```", "",
             f"llmq {record['llmq']['commit']}{' (with uncommitted changes)' if record['llmq']['dirty'] else ''}; "
             f"{record['platform']}", "", "| package | version |", "|---|---|"]
    for k, v in record["versions"].items():
        lines.append(f"| {k} | {v if v else 'not installed'} |")
    lines += ["", "## Checkpoints", "", "| model | checkpoint | format | llmq command |", "|---|---|---|---|"]
    for c in record["cases"]:
        lines.append(f"| {c['model']} | {c['name']} | {c['format']} | `{c['command']}` |")
    lines += ["", "## Results", "",
              "| model | checkpoint | check | reference | max abs diff | tolerance | result | note |",
              "|---|---|---|---|---:|---:|---|---|"]
    for r in record["rows"]:
        note = (r.get("note") or "").replace("|", "/")
        lines.append(f"| {r['model']} | {r['checkpoint']} | {r['check']} | {r['reference']} | {fmt_num(r.get('max_abs'))} "
                     f"| {fmt_num(r.get('tol'))} | {r['result']} | {note} |")
    s = record["summary"]
    lines += ["", f"Summary: {s['pass']} passed, {s['FAIL']} failed, {s['error']} errors, {s['known issue']} known "
              "loader issues (a loader refusing or failing for a reason explained in the row).", "",
              "## Logits tolerance", ""]
    lines += [record["tolerance"], ""]
    if record["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in record["notes"]] + [""]
    (out_dir / "loaders.md").write_text("\n".join(lines))


TOLERANCE_TEXT = (
    "tol = 2 · max|logit| · sqrt((2L+1)·K·eps32² + Σ_s r_s²), L layers, K = max(hidden, intermediate), "
    "eps32 = 2^-23: float32 summation order in 2L+1 GEMM stages (as tests/test_model.cc), plus a measured relative "
    "perturbation r_s per stage: for W8A8 with the loader's activation quantization, the difference between the "
    "loader's per-token grid and vLLM's (which llmq emulates) on the loader's own activations, plus one grid step "
    "for every element within float32 noise (2·rho·|v|, rho = 2·sqrt((2L+1)·K)·eps32) of a rounding boundary, all "
    "assumed to flip at once (an upper bound: measured, a single flip moves a logit of the 2-layer model by up to "
    "~0.6, which is why W8A8 tolerances are wide); for kernels that round dequantized weights to "
    "fp16, ||W_fp16 − W||/||W|| per linear. Weight-only compressed-tensors has no r_s. A check whose tolerance is "
    "not below the quantization effect (max|logits(quantized) − logits(float source)| under llmq) is marked as "
    "unable to discriminate.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True, help="TSV written by run.sh")
    ap.add_argument("--record", required=True, help="output directory for loaders.md / loaders.json")
    ap.add_argument("--command", default="", help="the command line to record")
    ap.add_argument("--notes", default="", help="file with extra notes (one per line) to record")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with open(args.manifest) as f:
        cases = list(csv.DictReader(f, delimiter="\t"))
    rows: list[dict] = []
    env = {}
    for case in cases:
        cfg = read_config(case["ckpt"])
        method = cfg["quantization_config"]["quant_method"]
        print(f"== {case['model']} / {case['name']} ({case['format']})", flush=True)
        n0 = len(rows)
        try:
            if method == "compressed-tensors":
                check_compressed_tensors(case, cfg, rows, env)
            elif method == "awq":
                check_awq(case, cfg, rows, env)
            elif method == "gptq":
                check_gptq(case, cfg, rows, env)
        except Exception as e:
            traceback.print_exc()
            rows.append(error_row(case, "check", "(script)", e))
        gc.collect()  # transformers models hold reference cycles: free each case's models before the next
        for r in rows[n0:]:
            print(f"   {r['result']:5s} {r['check']} [{r['reference']}] max|d| {fmt_num(r.get('max_abs'))} "
                  f"tol {fmt_num(r.get('tol'))} {r.get('note', '')}", flush=True)

    repo = Path(__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    notes = []
    if args.notes and Path(args.notes).exists():
        notes = [line.strip() for line in Path(args.notes).read_text().splitlines() if line.strip()]
    record = {
        "command": args.command,
        "llmq": {"commit": commit, "dirty": dirty},
        "platform": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, CPU only "
                    f"(torch.cuda.is_available() = {torch.cuda.is_available()})",
        "versions": {p: version(p) for p in ("torch", "transformers", "compressed-tensors", "safetensors", "numpy",
                                             "accelerate", "autoawq", "auto-gptq", "gptqmodel", "optimum")},
        "cases": [{k: c[k] for k in ("model", "name", "format", "command")} for c in cases],
        "rows": rows,
        "summary": {k: sum(1 for r in rows if r["result"] == k) for k in ("pass", "FAIL", "error", "known issue")},
        "tolerance": TOLERANCE_TEXT,
        "notes": notes,
    }
    write_record(record, Path(args.record))
    s = record["summary"]
    print(f"{s['pass']} passed, {s['FAIL']} failed, {s['error']} errors, {s['known issue']} known loader issues", flush=True)
    return 0 if s["FAIL"] == 0 and s["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
