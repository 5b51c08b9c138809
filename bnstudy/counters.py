"""Counter-based random numbers: dropout masks and BatchNorm noise as functions of (seed, step, stream, index).

Like Philox, the generator has no state: any path (one model, K stacked models, CPU or GPU) that asks for the same
(seed, step, stream, index) gets the same number, so a model trained alone and the same model inside a stack of K
draw the same masks and the same noise, and the two paths can be checked against each other.
"""
import torch

M32 = 0xFFFFFFFF  # the generator works in 32-bit words
DROPOUT_STREAM = 100  # hidden layer i's dropout masks use stream DROPOUT_STREAM + i; BatchNorm noise uses streams < 100


def as_words(values):
    """Integers in [0, 2**32) (an int64 tensor) as an int32 tensor of the same 32-bit patterns (larger ones wrap)."""
    return torch.where(values > 0x7FFFFFFF, values - 2**32, values).to(torch.int32)


def fmix32(h):
    """MurmurHash3's 32-bit finaliser on an int32 tensor of 32-bit words (bit patterns): a cheap, well-mixed bijection.

    int32 products wrap modulo 2**32 as the words' do, and >> on int32 copies the sign bit, so a mask makes it the
    logical shift the hash wants. Four bytes a word instead of eight: less memory to stream through per draw.
    """
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * (0x85EBCA6B - 2**32)  # the constants as signed 32-bit words
    h = h ^ ((h >> 13) & 0x7FFFF)
    h = h * (0xC2B2AE35 - 2**32)
    return h ^ ((h >> 16) & 0xFFFF)


def counter_uniform(seed, step, stream, index):
    """Uniform numbers in [0, 1), float64, that are a function of (seed, step, stream, index) alone.

    `seed` and `stream` may be tensors (one seed per model, several streams at once); `index` is an int64 tensor of
    values below 2**32; all three broadcast against each other.
    """
    seed = torch.as_tensor(seed, dtype=torch.int64, device=index.device)
    key = fmix32(as_words((seed * 0x9E3779B1 + step * 0x7F4A7C15 + stream * 0x632BE5AB) & M32))
    return (fmix32(key ^ as_words(index)).to(torch.int64) & M32).to(torch.float64).div(2.0**32)  # unsigned / 2**32


def feature_major_index(features, batch, device):
    """Counter indices for [..., F, B] activations: unit f, and (sample b, unit f) as b * F + f, as one model counts."""
    units = torch.arange(features, device=device)[:, None]
    return units, torch.arange(batch, device=device) * features + units


def sample_major_index(batch, features, device):
    """The same indices for [B, F] activations, as an nn.Module sees them: unit f, and (b, f) as b * F + f."""
    units = torch.arange(features, device=device)
    return units, torch.arange(batch, device=device)[:, None] * features + units
