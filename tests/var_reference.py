"""An independent plain-torch transcription of VAR's multi-scale residual quantiser, for tests only.

Written straight from FoundationVision/VAR ``models/quant.py`` (``VectorQuantizer2.forward``,
``f_to_idxBl_or_fhat``, ``idxBl_to_var_input``, ``get_next_autoregressive_input`` and the
``Phi*`` classes) as flat functions over raw tensors, with their own loops. It deliberately does
not import ``tokenizers_visual``: the tests compare two implementations, not one with itself.

Weights are passed raw: ``codebook_VC`` (``nn.Embedding.weight``), ``phi_params`` the K φ convs
in order as ``(weight [C, C, 3, 3], bias [C])`` pairs, or ``None`` when φ is the identity
(``quant_resi ≈ 0``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def var_phi_slot(at_from_0_to_1: float, share_quant_resi: int, num_scales: int) -> int:
    """Which φ VAR uses at relative depth ``si / (SN − 1)``: PhiShared, PhiPartiallyShared or PhiNonShared."""
    if share_quant_resi == 1:
        return 0
    K = num_scales if share_quant_resi == 0 else share_quant_resi
    if K == 4:
        ticks = np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K)
    else:
        ticks = np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)
    return np.argmin(np.abs(ticks - at_from_0_to_1)).item()


def var_apply_phi(h_BChw, si, *, phi_params, quant_resi, share_quant_resi, num_scales):
    if phi_params is None:
        return h_BChw
    weight, bias = phi_params[var_phi_slot(si / (num_scales - 1), share_quant_resi, num_scales)]
    r = abs(quant_resi)
    return h_BChw.mul(1 - r) + F.conv2d(h_BChw, weight, bias, stride=1, padding=1).mul_(r)


def var_quantize(f_BChw, *, codebook_VC, phi_params, patch_nums, quant_resi, share_quant_resi,
                 using_znorm=False, beta=0.25):
    """VAR's ``VectorQuantizer2.forward`` + ``f_to_idxBl_or_fhat``: ids ``[B, pn·pn]`` per scale,
    ``f_hat`` after each scale, the mean vq loss and the straight-through output ``f_hat``."""
    B, C, H, W = f_BChw.shape
    f_no_grad = f_BChw.detach()
    f_rest = f_no_grad.clone()
    f_hat = torch.zeros_like(f_rest)
    SN = len(patch_nums)
    idx_Bl_per_scale, f_hat_per_scale = [], []
    mean_vq_loss = 0.0
    for si, pn in enumerate(patch_nums):
        if si != SN - 1:
            rest_NC = F.interpolate(f_rest, size=(pn, pn), mode="area").permute(0, 2, 3, 1).reshape(-1, C)
        else:
            rest_NC = f_rest.permute(0, 2, 3, 1).reshape(-1, C)
        if using_znorm:
            rest_NC = F.normalize(rest_NC, dim=-1)
            idx_N = torch.argmax(rest_NC @ F.normalize(codebook_VC.data.T, dim=0), dim=1)
        else:
            d_no_grad = torch.sum(rest_NC.square(), dim=1, keepdim=True) + torch.sum(codebook_VC.data.square(), dim=1, keepdim=False)
            d_no_grad.addmm_(rest_NC, codebook_VC.data.T, alpha=-2, beta=1)
            idx_N = torch.argmin(d_no_grad, dim=1)
        idx_Bhw = idx_N.view(B, pn, pn)
        emb_BChw = F.embedding(idx_Bhw, codebook_VC).permute(0, 3, 1, 2)
        if si != SN - 1:
            h_BChw = F.interpolate(emb_BChw, size=(H, W), mode="bicubic").contiguous()
        else:
            h_BChw = emb_BChw.contiguous()
        h_BChw = var_apply_phi(h_BChw, si, phi_params=phi_params, quant_resi=quant_resi,
                               share_quant_resi=share_quant_resi, num_scales=SN)
        f_hat = f_hat + h_BChw
        f_rest -= h_BChw
        idx_Bl_per_scale.append(idx_N.reshape(B, pn * pn))
        f_hat_per_scale.append(f_hat.detach().clone())
        mean_vq_loss += F.mse_loss(f_hat.data, f_BChw).mul_(beta) + F.mse_loss(f_hat, f_no_grad)
    mean_vq_loss *= 1.0 / SN
    f_hat_ste = (f_hat.data - f_no_grad).add_(f_BChw)
    return idx_Bl_per_scale, f_hat_per_scale, mean_vq_loss, f_hat_ste


def var_teacher_forcing_input(gt_ms_idx_Bl, *, codebook_VC, phi_params, patch_nums, quant_resi, share_quant_resi):
    """VAR's ``idxBl_to_var_input``: ``[B, L − pn₀², C]``."""
    next_scales = []
    B = gt_ms_idx_Bl[0].shape[0]
    C = codebook_VC.shape[1]
    H = W = patch_nums[-1]
    SN = len(patch_nums)
    f_hat = torch.zeros(B, C, H, W, dtype=torch.float32)
    pn_next = patch_nums[0]
    for si in range(SN - 1):
        emb = F.embedding(gt_ms_idx_Bl[si], codebook_VC).transpose_(1, 2).reshape(B, C, pn_next, pn_next)
        h_BChw = F.interpolate(emb, size=(H, W), mode="bicubic")
        f_hat.add_(var_apply_phi(h_BChw, si, phi_params=phi_params, quant_resi=quant_resi,
                                 share_quant_resi=share_quant_resi, num_scales=SN))
        pn_next = patch_nums[si + 1]
        next_scales.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, C, -1).transpose(1, 2))
    return torch.cat(next_scales, dim=1)


def var_next_autoregressive_input(si, SN, f_hat, h_BChw, *, phi_params, patch_nums, quant_resi, share_quant_resi):
    """VAR's ``get_next_autoregressive_input`` (updates ``f_hat`` in place, as VAR does)."""
    HW = patch_nums[-1]
    if si != SN - 1:
        h = var_apply_phi(F.interpolate(h_BChw, size=(HW, HW), mode="bicubic"), si, phi_params=phi_params,
                          quant_resi=quant_resi, share_quant_resi=share_quant_resi, num_scales=SN)
        f_hat.add_(h)
        return f_hat, F.interpolate(f_hat, size=(patch_nums[si + 1], patch_nums[si + 1]), mode="area")
    h = var_apply_phi(h_BChw, si, phi_params=phi_params, quant_resi=quant_resi,
                      share_quant_resi=share_quant_resi, num_scales=SN)
    f_hat.add_(h)
    return f_hat, f_hat
