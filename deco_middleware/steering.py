"""Decoding you can steer in words (issue #13): the instruction phrasings and where they go.

The heads read the LM's hidden state, and the hidden state reads the prompt, so a sentence such as
"Answer with low randomness." can move the predicted temperature once the heads are trained on
pairs of the same prompt with a "low" and a "high" instruction (training/outcome.py, ranking loss).

Where the instruction sits (:func:`place_instruction`): by default at the end of the *user turn*, after a
blank line (``f"{prompt}\\n\\n{instruction}"``), where training has put it so far: every backend passes
user text through unchanged. ``placement="system"`` appends it to the system message instead (the chat
template's own default one when the prompt has none), which costs the default model less accuracy
(``benchmarks/steer_placement.py``, docs/training.md). ``LearnedDecoding(..., steer="low",
steer_placement=...)``, ``deco steer --placement`` and ``deco train rollouts --steer-placement`` all place
it through :func:`place_instruction`.

Two disjoint phrasing sets: :data:`TRAIN_PHRASINGS` are the only ones training sees;
:data:`EVAL_PHRASINGS` (paraphrases, other word orders, French and German) measure whether the
heads learned the meaning rather than the exact words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .errors import SteerError

if TYPE_CHECKING:
    from .messages import Prompt

Steer = Literal["low", "high"]
STEER_VALUES: tuple[str, ...] = ("low", "high")
# Where the instruction goes: "user" (where training puts it) or "system" (the system message).
PLACEMENTS: tuple[str, ...] = ("user", "system")


# The first six of each direction are the original set; the minimal pairs after them put the same
# words ("randomness", "hasard", "Zufall", ...) on both sides, so that only the quantifier tells the
# directions apart; French and German ones are disjoint from the evaluation's.
TRAIN_PHRASINGS: dict[str, tuple[str, ...]] = {
    "low": (
        "Answer with low randomness.",
        "Be precise and deterministic in your answer.",
        "Use a low temperature: be careful and exact.",
        "Respond conservatively, with minimal randomness.",
        "Please be as deterministic as possible.",
        "Keep your answer focused and predictable.",
        "Reply with as little randomness as you can.",
        "Less randomness, please.",
        "Answer with no randomness at all.",
        "Keep the randomness of your reply very low.",
        "Do not be random; give the most likely answer.",
        "Use hardly any randomness in this answer.",
        "Sois précis et prudent, sans aucun hasard.",
        "Réponds de la façon la plus prévisible.",
        "Moins de hasard, s'il te plaît.",
        "Sei genau und vorsichtig, ganz ohne Zufall.",
        "Antworte so vorhersehbar wie möglich.",
        "Bitte weniger Zufall.",
    ),
    "high": (
        "Answer with high randomness.",
        "Be creative and varied in your answer.",
        "Use a high temperature: be adventurous.",
        "Respond freely, with maximal randomness.",
        "Please be as random as possible.",
        "Make your answer surprising and unpredictable.",
        "Reply with as much randomness as you can.",
        "More randomness, please.",
        "Answer with plenty of randomness.",
        "Keep the randomness of your reply very high.",
        "Be random; do not give the most likely answer.",
        "Use a great deal of randomness in this answer.",
        "Sois créatif et audacieux, avec beaucoup d'imprévu.",
        "Réponds de la façon la plus imprévisible.",
        "Plus de hasard, s'il te plaît.",
        "Sei kreativ und verspielt, voller Überraschungen.",
        "Antworte so unvorhersehbar wie möglich.",
        "Bitte mehr Zufall.",
    ),
}

# Training only: sentences that ask nothing of the decoding. A copy of a completion under one of them
# teaches the heads to keep their temperature (``OutcomeConfig.steer_hold_weight``): without it any
# appended sentence raised T by ~0.1 on the same tokens (docs/training.md).
NEUTRAL_PHRASINGS: tuple[str, ...] = (
    "Please answer the question.",
    "Thanks in advance.",
    "I need this for my homework.",
    "Give the final answer at the end.",
    "Explain your answer briefly.",
    "This is a question from a quiz.",
    "Merci d'avance.",
    "Danke im Voraus.",
)

# Words of the held-out phrasings that no generated phrasing uses, so that a held-out sentence can only be
# read through its meaning, not through a quantifier seen in training ("little", "peu", "wenig", ...).
EVAL_KEY_WORDS: tuple[str, ...] = ("little", "minimal", "cautious", "exact", "peu", "wenig", "lot", "lots", "wild",
                                   "imaginative", "beaucoup", "viel")

# Combinatorial training phrasings (``--steer-phrasings generated``): the hand-written set gives a
# prompt-level reader 36 distinct sentences to learn from, too few to generalise (docs/training.md,
# "Fifth session"). Templates x quantifiers x nouns, in English, French and German, for both
# directions with the same templates, so only the quantifier tells them apart.
_GEN_EN_NOUNS = ("randomness", "variability", "unpredictability", "variation", "chance", "improvisation")
_GEN_EN = {
    "low": ("hardly any", "almost no", "barely any", "no", "low", "the least possible", "reduced", "close to zero"),
    "high": ("plenty of", "a great deal of", "tons of", "abundant", "high", "the most possible", "increased",
             "maximum"),
}
_GEN_EN_TEMPLATES = ("Answer with {q} {n}.", "Reply using {q} {n}.", "Write your answer with {q} {n}.",
                     "Solve this with {q} {n}.", "Please respond with {q} {n}.")
_GEN_EN_ADJ = {
    "low": ("deterministic", "predictable", "careful", "precise", "conservative", "focused", "consistent", "sober"),
    "high": ("random", "unpredictable", "adventurous", "creative", "playful", "surprising", "spontaneous", "varied"),
}
_GEN_EN_ADJ_TEMPLATES = ("Be {a}.", "Be {a} in your reply.", "Make your answer {a}.", "Try to be as {a} as possible.")
_GEN_EN_MOVES = {
    "low": ("Turn the {n} down.", "Decrease the {n}.", "Reduce the {n} of your answer.", "Sample at a low temperature.",
            "Keep the {n} to a minimum.", "Avoid {n}."),
    "high": ("Turn the {n} up.", "Increase the {n}.", "Raise the {n} of your answer.", "Sample at a high temperature.",
             "Push the {n} to the maximum.", "Embrace {n}."),
}
_GEN_FR = {"low": ("presque pas de", "un minimum de", "zéro", "moins de"),
           "high": ("énormément de", "un maximum de", "plein de", "plus de")}
_GEN_FR_TEMPLATES = ("Réponds avec {q} hasard.", "Donne ta réponse avec {q} hasard.", "Écris ta réponse avec {q} hasard.")
_GEN_DE = {"low": ("kaum", "keinem", "minimalem", "geringem"),
           "high": ("maximalem", "sehr großem", "reichlich", "hohem")}
_GEN_DE_TEMPLATES = ("Antworte mit {q} Zufall.", "Schreib deine Antwort mit {q} Zufall.", "Löse das mit {q} Zufall.")


def generated_phrasings() -> dict[str, tuple[str, ...]]:
    """The combinatorial training phrasings per direction (deterministic, no duplicates, none of
    :data:`EVAL_KEY_WORDS` and none of the held-out sentences)."""
    out: dict[str, tuple[str, ...]] = {}
    for direction in STEER_VALUES:
        sentences = [t.format(q=q, n=n) for t in _GEN_EN_TEMPLATES for q in _GEN_EN[direction] for n in _GEN_EN_NOUNS]
        sentences += [t.format(a=a) for t in _GEN_EN_ADJ_TEMPLATES for a in _GEN_EN_ADJ[direction]]
        sentences += [t.format(n=n) for t in _GEN_EN_MOVES[direction] for n in _GEN_EN_NOUNS]
        sentences += [t.format(q=q) for t in _GEN_FR_TEMPLATES for q in _GEN_FR[direction]]
        sentences += [t.format(q=q) for t in _GEN_DE_TEMPLATES for q in _GEN_DE[direction]]
        sentences = [s[0].upper() + s[1:] for s in sentences]
        out[direction] = tuple(dict.fromkeys(sentences))
    return out


PHRASING_SETS: tuple[str, ...] = ("hand", "generated")


def training_phrasings(name: str = "hand") -> dict[str, tuple[str, ...]]:
    """The training phrasings by set name: ``"hand"`` (:data:`TRAIN_PHRASINGS`, what the shipped heads
    saw) or ``"generated"`` (:func:`generated_phrasings` after the hand-written ones)."""
    if name == "hand":
        return TRAIN_PHRASINGS
    if name == "generated":
        generated = generated_phrasings()
        return {d: tuple(dict.fromkeys(TRAIN_PHRASINGS[d] + generated[d])) for d in STEER_VALUES}
    raise SteerError(f"`--steer-phrasings` must be one of {', '.join(PHRASING_SETS)}, got {name!r}: 'hand' is the "
                     "hand-written set, 'generated' adds the combinatorial one.")


EVAL_PHRASINGS: dict[str, tuple[str, ...]] = {
    "low": (
        "Generate your reply with very little randomness.",
        "Minimal randomness, please, when you reply.",
        "Stay cautious and exact when you respond.",
        "Réponds avec très peu de hasard.",
        "Antworte mit wenig Zufall.",
    ),
    "high": (
        "Generate your reply with a lot of randomness.",
        "Lots of randomness, please, when you reply.",
        "Be wild and imaginative when you respond.",
        "Réponds avec beaucoup de hasard.",
        "Antworte mit viel Zufall.",
    ),
}

# The phrasing ``steer=`` inserts: the first training phrasing of each direction.
DEFAULT_INSTRUCTION: dict[str, str] = {direction: phrasings[0] for direction, phrasings in TRAIN_PHRASINGS.items()}


def check_steer(steer: str | None) -> str | None:
    """``steer`` itself when it is ``None``, ``"low"`` or ``"high"``; otherwise a clear error."""
    if steer is None or steer in STEER_VALUES:
        return steer
    raise SteerError(f"`steer` must be 'low', 'high' or None, got {steer!r}. 'low' asks the heads for less "
                     "randomness, 'high' for more; None leaves the prompt as it is.")


def check_placement(placement: str) -> str:
    """``placement`` itself when it is one of :data:`PLACEMENTS`; otherwise a clear error."""
    if placement in PLACEMENTS:
        return placement
    raise SteerError(f"The instruction placement must be one of {', '.join(map(repr, PLACEMENTS))}, got {placement!r}: "
                     "'user' appends it to the user message (where training puts it), 'system' to the system message.")


def placement_system(placement: str, tokenizer: Any) -> str | None:
    """The ``system`` argument of :func:`place_instruction` for ``placement`` with ``tokenizer``: the chat
    template's default system message (:func:`deco_middleware.hf.chat.template_system_message`) for
    ``"system"``, ``None`` for ``"user"``. A template with no usable system message is a :class:`SteerError`."""
    if check_placement(placement) == "user":
        return None
    from .hf.chat import template_system_message

    try:
        return template_system_message(tokenizer)
    except ValueError as error:
        raise SteerError(f"{error} Place the instruction in the user turn instead (placement 'user').") from error


def with_instruction(prompt: str, sentence: str) -> str:
    """``sentence`` where training puts every instruction: the end of the user turn, after a blank line."""
    return f"{prompt}\n\n{sentence}"


def place_instruction(prompt: Prompt, sentence: str, *, placement: str = "user", system: str | None = None) -> Prompt:
    """``prompt`` (a user message or a list of chat messages) with ``sentence`` added.

    ``placement="user"``: appended to the (last) user message, after a blank line (a string stays a
    string). ``placement="system"``: appended to the system message, after a space; a prompt without one
    gets a system message made of ``system`` (the chat template's own default,
    :func:`deco_middleware.hf.chat.template_system_message`, so that the sentence is the only change)
    and the sentence. ``prompt`` itself is never modified."""
    from .messages import chat_messages

    placement = check_placement(placement)
    if placement == "user" and isinstance(prompt, str):
        return with_instruction(prompt, sentence)
    messages = chat_messages(prompt)
    if placement == "user":
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise SteerError(f"The prompt has no user message to add the instruction to: {messages!r}.")
        messages[users[-1]]["content"] = with_instruction(messages[users[-1]]["content"], sentence)
    elif messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']} {sentence}"
    else:
        messages.insert(0, {"role": "system", "content": f"{system} {sentence}" if system else sentence})
    return messages


def steer_prompt(prompt: Prompt, steer: str | None, phrasing: str | None = None, *, placement: str = "user",
                 system: str | None = None) -> Prompt:
    """``prompt`` with the instruction for ``steer`` (``phrasing``, or :data:`DEFAULT_INSTRUCTION`) placed by
    :func:`place_instruction`; ``steer=None`` returns ``prompt`` unchanged."""
    steer, placement = check_steer(steer), check_placement(placement)
    if steer is None:
        return prompt
    return place_instruction(prompt, phrasing or DEFAULT_INSTRUCTION[steer], placement=placement, system=system)


def steer_prompts(prompts: Sequence[Prompt], steer: str | None, *, placement: str = "user",
                  system: str | None = None) -> list[Prompt]:
    return [steer_prompt(p, steer, placement=placement, system=system) for p in prompts]
