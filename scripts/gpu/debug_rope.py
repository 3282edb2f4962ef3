import torch
from accel.kernels.tree_attention import rope_write
from accel.runtime.model import _rotate_half
g = torch.Generator().manual_seed(4)
B, T, Hq, Hkv, D, S = 2, 3, 4, 2, 16, 32
dt = torch.bfloat16; DEV = "cuda"
qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=g).to(DEV, dt)
ang = torch.outer(torch.arange(S, dtype=torch.float32), torch.rand(D // 2, generator=g))
cos, sin = torch.cat([ang, ang], -1).cos().to(DEV), torch.cat([ang, ang], -1).sin().to(DEV)
pos = torch.tensor([[0, 1, 2], [7, 8, 9]], device=DEV)
kc = torch.zeros(B, Hkv, S, D, dtype=dt, device=DEV); vc = torch.zeros_like(kc)
q = rope_write(qkv, cos, sin, pos, torch.arange(B, device=DEV), pos + 3, kc, vc, Hq, Hkv)
x = qkv.view(B, T, Hq + 2 * Hkv, D)
c, s = cos[pos].to(dt)[:, :, None], sin[pos].to(dt)[:, :, None]
t1 = x * c; t2 = _rotate_half(x) * s; ref = t1 + t2
bad = (q != ref[:, :, :Hq]).nonzero()
print("rope mismatches", len(bad), "of", q.numel())
for i in bad[:4].tolist():
    b, t, h, d = i
    print(i, "x", x[b,t,h,d].item(), "c", c[b,t,0,d].item(), "s", s[b,t,0,d].item(), "t1", t1[b,t,h,d].item(), "t2", t2[b,t,h,d].item(), "ref", ref[b,t,h,d].item(), "got", q[b,t,h,d].item(),
          "fp32 t1+t2", (t1[b,t,h,d].float() + t2[b,t,h,d].float()).item())
