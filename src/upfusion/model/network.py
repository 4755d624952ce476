"""The UP-Fusion network (spec section 2), read top to bottom like the paper's figure.

A = visible / MRI (the reference's ``vi``), B = infrared / CT / PET / SPECT / GFP (``ir``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import Down, ShallowEmbedding, Up, conv1x1, conv3x3, transformer_stage
from .gam import GAM
from .scpm import SCPM
from .tcpm import TCPM


@dataclass(frozen=True)
class SharedStatistics:
    """Whole-image decisions given to a forward pass that sees only one tile (``upfusion.tiling``).

    Every field left None is computed from the input, as in a whole-image pass.
    """

    scpm_indices: torch.Tensor | None = None  # SCPM's kept channels [N, k]
    gam_pooled: tuple[torch.Tensor, torch.Tensor] | None = None  # GAP(eA), GAP(eB): [N, C, 1, 1] each
    tcpm_indices: tuple[torch.Tensor | None, ...] | None = None  # TCPM SE selections of levels 1..4, [N, m]


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network's shape; the switches are the paper's Table 3 ablations."""

    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (4, 6, 6, 8)
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    num_refinement_blocks: int = 4
    ffn_expansion_factor: float = 2.66
    scpm_keep_ratio: float = 0.7
    tcpm_keep_ratio: float = 0.5
    attention_keep_ratio: float = 0.9
    semantic_backbone: str | None = "convnext_base"
    backbone_dim: int = 1024
    text_dim: int = 512
    scpm: bool = True
    gam: bool = True
    tcpm: bool = True
    tcpm_channel_attention: bool = True
    scpm_channel_attention: bool = True
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_blocks", tuple(int(x) for x in self.num_blocks))
        object.__setattr__(self, "heads", tuple(int(x) for x in self.heads))
        if len(self.num_blocks) != 4 or len(self.heads) != 4:
            raise ValueError("num_blocks and heads need one entry per level (4)")
        for level, h in enumerate(self.heads):
            width = self.dim * 2**level
            if width % h:
                raise ValueError(f"level {level + 1}: width {width} is not divisible by {h} heads")
        if self.dim % 2:
            raise ValueError("dim must be even (the down-samplers halve it)")
        if self.scpm and self.semantic_backbone is None and not self.scpm_channel_attention:
            raise ValueError("SCPM without channel attention needs a semantic backbone")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["num_blocks"] = list(self.num_blocks)
        d["heads"] = list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def uses_backbone(self) -> bool:
        return self.scpm and self.semantic_backbone is not None


class UPFusion(nn.Module):
    """UP-Fusion: fuses two registered single-channel images into one luma image.

    ``forward(a, b, text)``: ``a``, ``b`` are [N, 1, H, W] in [0, 1] (H, W multiples of 8; a
    3-channel input is reduced to BT.601 luma first), ``text`` is the prompt embedding,
    [T], [1, T] or [N, T]. Returns the fused luma [N, 1, H, W], not clamped.

    ``backbone`` is the frozen semantic backbone SCPM consults; it must be given when the
    config names one (see ``upfusion.build_model``).
    """

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        cfg = config
        c = cfg.dim
        exp = cfg.ffn_expansion_factor
        nb, hd = cfg.num_blocks, cfg.heads
        if cfg.uses_backbone and backbone is None:
            raise ValueError(f"config names semantic backbone {cfg.semantic_backbone!r} but none was given")

        # 2. shallow embeddings, one per source
        self.patch_embed = ShallowEmbedding(1, c)  # A
        self.ir_imb = ShallowEmbedding(1, c)  # B
        # 3. SCPM on the averaged embedding, then 1x1 expansion to the two halves
        self.channel_select = None
        if cfg.scpm:
            self.channel_select = SCPM(
                c,
                cfg.scpm_keep_ratio,
                backbone if cfg.semantic_backbone is not None else None,
                cfg.backbone_dim,
                channel_attention=cfg.scpm_channel_attention,
            )
        self.expand_conv = conv1x1(c, 2 * c, bias=True)
        # 4. GAM, one per source
        self.GEO_vi = GAM(c) if cfg.gam else None
        self.GEO_ir = GAM(c) if cfg.gam else None
        # 5. two encoder branches sharing their down-samplers
        self.encoder_level1_vi = transformer_stage(c, hd[0], nb[0], exp)
        self.encoder_level1_ir = transformer_stage(c, hd[0], nb[0], exp)
        self.down1_2 = Down(c)
        self.encoder_level2_vi = transformer_stage(2 * c, hd[1], nb[1], exp)
        self.encoder_level2_ir = transformer_stage(2 * c, hd[1], nb[1], exp)
        self.down2_3 = Down(2 * c)
        self.encoder_level3_vi = transformer_stage(4 * c, hd[2], nb[2], exp)
        self.encoder_level3_ir = transformer_stage(4 * c, hd[2], nb[2], exp)
        self.down3_4 = Down(4 * c)
        self.latent_vi = transformer_stage(8 * c, hd[3], nb[3], exp)
        self.latent_ir = transformer_stage(8 * c, hd[3], nb[3], exp)

        # 6. TCPM at every level
        def tcpm(width: int, heads: int) -> TCPM | None:
            if not cfg.tcpm:
                return None
            return TCPM(
                width,
                heads,
                cfg.text_dim,
                cfg.tcpm_keep_ratio,
                exp,
                channel_attention=cfg.tcpm_channel_attention,
                attention_keep_ratio=cfg.attention_keep_ratio,
            )

        self.latent_shuffle_channel = tcpm(8 * c, hd[3])
        self.encoder_shuffle_channel3 = tcpm(4 * c, hd[2])
        self.encoder_shuffle_channel2 = tcpm(2 * c, hd[1])
        self.encoder_shuffle_channel1 = tcpm(c, hd[0])
        # 7. decoder and refinement
        self.up4_3 = Up(8 * c)
        self.reduce_chan_level3 = conv1x1(8 * c, 4 * c)
        self.decoder_level3 = transformer_stage(4 * c, hd[2], nb[2], exp)
        self.up3_2 = Up(4 * c)
        self.reduce_chan_level2 = conv1x1(4 * c, 2 * c)
        self.decoder_level2 = transformer_stage(2 * c, hd[1], nb[1], exp)
        self.up2_1 = Up(2 * c)
        self.decoder_level1 = transformer_stage(2 * c, hd[0], nb[0], exp)
        self.refinement = transformer_stage(2 * c, hd[0], cfg.num_refinement_blocks, exp)
        self.output = conv3x3(2 * c, 1)

    @staticmethod
    def to_luma(x: torch.Tensor) -> torch.Tensor:
        """BT.601 luma of a 3-channel input, evaluated left to right; 1 channel passes through."""
        if x.shape[1] == 3:
            return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        return x

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, text: torch.Tensor, shared: SharedStatistics | None = None
    ) -> torch.Tensor:
        """The fused luma [N, 1, H, W]; ``shared`` only when ``a``, ``b`` are one tile of a larger image."""
        shared = shared or SharedStatistics()
        e_a, e_b = self.embed(a, b)
        f_a, f_b = self.select_and_modulate(e_a, e_b, shared)
        del e_a, e_b  # full-resolution maps are dropped as soon as they are used (inference memory)
        levels = self.encode(f_a, f_b)
        del f_a, f_b
        fused = self.fuse_levels(levels, text, shared)
        return self.decode(fused)

    def embed(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: the shallow embeddings ``eA``, ``eB`` (after reducing RGB sources to luma)."""
        return self.patch_embed(self.to_luma(a)), self.ir_imb(self.to_luma(b))

    def select_and_modulate(
        self, e_a: torch.Tensor, e_b: torch.Tensor, shared: SharedStatistics
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 3-4: SCPM on the averaged embedding, the 1x1 expansion to two halves, GAM."""
        p = (e_a + e_b) / 2
        if self.channel_select is not None:
            p = self.channel_select(p, shared.scpm_indices)
        p_a, p_b = self.expand_conv(p).chunk(2, dim=1)
        pooled_a, pooled_b = shared.gam_pooled or (None, None)
        f_a = self.GEO_vi(p_a, e_a, pooled_a) if self.GEO_vi is not None else p_a
        f_b = self.GEO_ir(p_b, e_b, pooled_b) if self.GEO_ir is not None else p_b
        return f_a, f_b

    def encode(self, f_a: torch.Tensor, f_b: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Step 5: the two encoder branches (shared down-samplers); [(A, B) features of levels 1..4]."""
        a1 = self.encoder_level1_vi(f_a)
        b1 = self.encoder_level1_ir(f_b)
        a2 = self.encoder_level2_vi(self.down1_2(a1))
        b2 = self.encoder_level2_ir(self.down1_2(b1))
        a3 = self.encoder_level3_vi(self.down2_3(a2))
        b3 = self.encoder_level3_ir(self.down2_3(b2))
        a4 = self.latent_vi(self.down3_4(a3))
        b4 = self.latent_ir(self.down3_4(b3))
        return [(a1, b1), (a2, b2), (a3, b3), (a4, b4)]

    def tcpm_modules(self) -> list[TCPM | None]:
        """The TCPM of levels 1, 2, 3 and the latent level (None in the "without TCPM" ablation)."""
        return [
            self.encoder_shuffle_channel1,
            self.encoder_shuffle_channel2,
            self.encoder_shuffle_channel3,
            self.latent_shuffle_channel,
        ]

    def fuse_levels(
        self, levels: list[tuple[torch.Tensor, torch.Tensor]], text: torch.Tensor, shared: SharedStatistics
    ) -> list[torch.Tensor]:
        """Step 6: TCPM at every level, [T1, T2, T3, T4]; empties ``levels`` (each pair is freed once fused)."""
        if text.dim() == 1:
            text = text.unsqueeze(0)
        indices = shared.tcpm_indices or (None, None, None, None)
        fused = []
        for tcpm, level_indices in zip(self.tcpm_modules(), indices, strict=True):
            a, b = levels.pop(0)
            # "without TCPM" ablation: the sum of the two branch features
            fused.append(a + b if tcpm is None else tcpm(a, b, text, level_indices))
        return fused

    def decode(self, fused: list[torch.Tensor]) -> torch.Tensor:
        """Step 7: the decoder climbs from the latent level, taking T3, T2, T1 on the way (empties ``fused``)."""
        d = self.up4_3(fused.pop())
        d = self.decoder_level3(self.reduce_chan_level3(torch.cat([d, fused.pop()], dim=1)))
        d = self.up3_2(d)
        d = self.decoder_level2(self.reduce_chan_level2(torch.cat([d, fused.pop()], dim=1)))
        d = self.up2_1(d)
        d = self.decoder_level1(torch.cat([d, fused.pop()], dim=1))
        d = self.refinement(d)
        return self.output(d)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the frozen semantic backbone."""
        frozen = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def backbone_parameters(self) -> list[nn.Parameter]:
        if self.channel_select is None or self.channel_select.backbone is None:
            return []
        return list(self.channel_select.backbone.parameters())
