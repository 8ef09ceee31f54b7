"""Properties of BA in two foreign loops: timm / DeiT-style image loaders and pytorch/examples word_language_model
(time-major (T, B) tensors). The README's own blocks are run as pasted by tests/test_readme_blocks.py."""
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seqba import FixedSizeBatchSampler, RepeatBatchSampler, repeat_batch, repeat_streams


class RandomFlipImages(Dataset):
    """N tiny 1x2x2 'images' whose transform flips at random: each request of an index is a new view."""

    def __init__(self, n):
        self.images, self.labels = torch.arange(n * 4.0).view(n, 1, 2, 2), torch.arange(n)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        flip = torch.rand(()) < 0.5
        return (self.images[i].flip(-1) if flip else self.images[i]), self.labels[i]


def test_timm_style_loader():
    dataset = RandomFlipImages(100)
    # --- README: timm / DeiT-style loader ---
    batches = FixedSizeBatchSampler(len(dataset), batch_size=8, drop_last=True, seed=0)  # no lengths needed
    loader = DataLoader(dataset, batch_sampler=RepeatBatchSampler(batches, repeats=4))    # M=4 views per image
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)  # a batch sampler's epoch (see the README on timm versions)
        for images, labels in loader:          # (M·B, 1, 2, 2) = (32, 1, 2, 2): 8 images, 4 views each
            ...
    # BA: every image every epoch, M x the rows; DeiT's repeated augmentation: the rows of M=1, ~1/M of the images
    deit = DataLoader(dataset, batch_sampler=RepeatBatchSampler(batches, repeats=4, epoch_budget="rows"))
    # --- end ---
    assert images.shape == (32, 1, 2, 2) and labels.tolist() == [i for i in labels[::4].tolist() for _ in range(4)]
    assert len(loader) == 12 and sum(len(y) for _, y in loader) == 4 * 96
    assert len(deit) == 3 and sum(len(y) for _, y in deit) == 96
    views = torch.stack([x for x, _ in loader]).view(12, 8, 4, 4)
    assert (views != views[:, :, :1]).any(), "the copies of an image are augmented independently"


class RNNModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel, cut down: time-major nn.LSTM (no batch_first)."""

    def __init__(self, ntoken=20, nhid=8, dropout=0.0):
        super().__init__()
        self.drop, self.encoder = nn.Dropout(dropout), nn.Embedding(ntoken, nhid)
        self.rnn, self.decoder, self.nhid = nn.LSTM(nhid, nhid), nn.Linear(nhid, ntoken), nhid

    def forward(self, input, hidden):  # input (T, B)
        output, hidden = self.rnn(self.drop(self.encoder(input)), hidden)
        return self.decoder(self.drop(output)).view(-1, self.decoder.out_features), hidden  # (T*B, ntoken)

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(1, bsz, self.nhid), weight.new_zeros(1, bsz, self.nhid))


def batchify(data, bsz):  # pytorch/examples word_language_model/main.py
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()  # (L // bsz, bsz)


def get_batch(source, i, bptt=5):  # pytorch/examples word_language_model/main.py
    seq_len = min(bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].view(-1)


def lm_loss(model, train_data, batch_size):
    criterion, hidden, total = nn.CrossEntropyLoss(), model.init_hidden(batch_size), 0.0
    for i in range(0, train_data.size(0) - 1, 5):
        data, targets = get_batch(train_data, i)
        output, hidden = model(data, hidden)
        hidden = tuple(h.detach() for h in hidden)
        total = total + criterion(output, targets)
    return total


def test_word_language_model():
    torch.manual_seed(0)
    corpus_train = torch.randint(0, 20, (203,))
    batch_size, M = 4, 3
    # --- README: word_language_model ---
    train_data = repeat_streams(batchify(corpus_train, batch_size), M)  # (L, B) -> (L, B·M): copies as columns
    model = RNNModel(dropout=0.0)
    hidden = model.init_hidden(batch_size * M)                          # the hidden state is sized B·M
    # or per batch, before targets are flattened: repeat the batch axis (dim=1), never the time axis (dim=0)
    data, targets = get_batch(batchify(corpus_train, batch_size), 0)
    data, targets = repeat_batch((data, targets.view(data.shape)), M, "tiled", dim=1)
    targets = targets.reshape(-1)
    # --- end ---
    assert data.shape == (5, 12) and torch.equal(data, train_data[:5]) and torch.equal(targets, train_data[1:6].view(-1))
    assert hidden[0].shape == (1, 12, 8)
    # without dropout, the M copies give exactly the M=1 loss and gradient
    loss_m = lm_loss(model, train_data, batch_size * M)
    grads_m = torch.autograd.grad(loss_m, list(model.parameters()))
    loss_1 = lm_loss(model, batchify(corpus_train, batch_size), batch_size)
    grads_1 = torch.autograd.grad(loss_1, list(model.parameters()))
    assert torch.allclose(loss_m, loss_1, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_m, grads_1))
    # with dropout the copies differ
    model.drop.p = 0.5
    out, _ = model(train_data[:5], model.init_hidden(batch_size * M))
    out = out.view(5, M, batch_size, -1)
    assert not torch.allclose(out[:, 0], out[:, 1])
