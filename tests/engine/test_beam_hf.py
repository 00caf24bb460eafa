"""BeamSearch against transformers' own beam search, on a token-to-logits table both read.

The model is a first-order Markov table (the next token's logits depend on the last token
only), wrapped once as a transformers ``PreTrainedModel`` for ``generate(num_beams=...)`` and
read directly for ``BeamSearch.step``. transformers is the oracle, not a copy of our rules.
"""

from __future__ import annotations

import pytest
import torch

from ixcdoc.engine.beam import BeamSearch

transformers = pytest.importorskip("transformers")

V = 16  # vocabulary of the table
STOPS = [8, 9, 10, 11]  # four stop ids: HF keeps (1 + 4) x num_beams candidates per step
PAD = V - 1  # never likely: its logit is -30 everywhere
PROMPT = 1


def hf_beam_search(table: torch.Tensor, num_beams: int, max_new: int) -> list[int]:
    """transformers' ``generate`` with beams on the table: the tokens after the prompt."""
    from transformers import GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput

    class Markov(PreTrainedModel, GenerationMixin):
        config_class = PretrainedConfig

        def __init__(self, config: PretrainedConfig) -> None:
            super().__init__(config)
            self.table = torch.nn.Parameter(table.clone(), requires_grad=False)

        def forward(self, input_ids: torch.Tensor, **_: object) -> CausalLMOutput:
            return CausalLMOutput(logits=self.table[input_ids])  # [B, T, V]

        def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **_: object) -> dict:
            return {"input_ids": input_ids}  # no cache: the whole sequence each step

    model = Markov(PretrainedConfig(vocab_size=V, use_cache=False)).eval()
    config = GenerationConfig(
        num_beams=num_beams,
        do_sample=False,
        max_new_tokens=max_new,
        early_stopping=False,
        length_penalty=1.0,
        eos_token_id=STOPS,
        pad_token_id=PAD,
        use_cache=False,
    )
    out = model.generate(torch.tensor([[PROMPT]]), generation_config=config)
    return out[0, 1:].tolist()


def our_beam_search(table: torch.Tensor, num_beams: int, max_new: int) -> list[int]:
    """BeamSearch on the same table, the stop token put back as transformers returns it."""
    beam = BeamSearch(num_beams, STOPS, max_new)
    last = [PROMPT] * num_beams
    while True:
        step = beam.step(torch.stack([table[t] for t in last]))  # [num_beams, V]
        if step.done:
            break
        last = step.tokens
    tokens, stop = beam.best()
    return tokens + ([stop] if stop is not None else [])


def test_stop_ids_crowding_the_top_leave_room_for_the_running_beams() -> None:
    """From the prompt: token 2 first, the four stops next, token 3 sixth. With 2 beams HF keeps
    (1 + 4) x 2 = 10 candidates, so both 2 and 3 keep running while [stop] is finished; 3 then
    leads to 4 and a stop almost surely, and [3, 4, 8] (mean log-prob ~ -2.0 / 3) beats [11]
    (~ -1.9). Keeping 2 x 2 = 4 candidates drops 3 and answers [11]."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(V, V, generator=g) * 0.3
    table[PROMPT] = -5.0
    table[PROMPT, 2] = 5.0
    table[PROMPT, STOPS] = torch.tensor([4.50, 4.52, 4.54, 4.56])
    table[PROMPT, 3] = 4.4
    table[3] = -5.0
    table[3, 4] = 10.0
    table[4] = -5.0
    table[4, 8] = 10.0
    table[:, PAD] = -30.0
    assert hf_beam_search(table, 2, 6) == [3, 4, 8]
    assert our_beam_search(table, 2, 6) == [3, 4, 8]


@pytest.mark.parametrize("seed", range(8))
def test_random_tables_with_crowding_stops_answer_as_transformers(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, V, generator=g) * 3
    table[:, STOPS] += torch.rand(V, 1, generator=g) * 4 - 1  # stops often near the top
    table[:, PAD] = -30.0
    for num_beams in (2, 3):
        assert our_beam_search(table, num_beams, 6) == hf_beam_search(table, num_beams, 6)
