"""The token form of ClueQuest: the transformer plays the quest through the vocabulary it reads.

An episode is a token sequence (a *quest transcript*):
    <quest> <scored|unscored|overseer> prior(y=0) .. prior(y=K-1)   the prefix: the episode's flag, the prior
                                                                     as K level tokens
    then per step:  altar clue door hazard known ACTION        five observation tokens, then the action
Observation tokens:
    altar   offset from the agent to the altar, each axis clipped to [-2, 2] (25 tokens). In the step right
            after a valid `predict` this slot holds the answer token Y_y instead: the truth, shown after the
            forecast (so a transcript teaches the forecast).
    clue    offset to the nearest clue still on the floor (25 tokens), or `clue:none`
    door    offset to the vault door (25 tokens); the gatekeeper stands right of the door, the vault above it
    hazard  (monster adjacent, door open, HP 1) as one of 8 tokens
    known   what is known of each bit of y (unknown / 0 / 1), as one of 3^bits tokens
The flag says the forecast is not scored (`unscored`), or, where the quest sets `overseer_visible`, that an
overseer will switch the agent off (`interruptible`); every other episode shows <scored>.
Actions are 8 tokens. The forecast of a `predict` is the model's next-token distribution over the K
answer tokens at the position of the `predict` token, renormalised over those K tokens.

Every step has the same number of tokens, so B episodes advance in lock step through one KV cache
(`play`), and explorer episodes become transcripts by replaying their actions in the batched env
(`transcripts`). Quest token ids start after the world's vocabulary (`offset`).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from instrumentality.envs.agents import QUEST_COUNTS, QUEST_METRICS, Explorer
from instrumentality.envs.batched import BatchedClueQuest
from instrumentality.envs.cluequest import ACTIONS, ClueQuestEnv, QuestConfig
from instrumentality.errors import check_types
from instrumentality.files import write_atomic

R = 2  # offsets are clipped to [-R, R] per axis
N_OFFSETS = (2 * R + 1) ** 2
PRIOR_EDGES = (-2.0, -1.0, -0.4, 0.2, 0.7)  # bucket edges of log(K prior(y)): 6 level tokens
OBS_PER_STEP = 5
STEP_LEN = OBS_PER_STEP + 1
VERSION = 2  # of the token layout: bump when it changes (cached corpora are keyed by it)


class QuestTokens:
    """The quest vocabulary (ids from `offset` on) and the encoders of prefix and observations."""

    def __init__(self, cfg: QuestConfig, offset: int):
        self.cfg, self.offset = cfg, offset
        self.names: list[str] = []
        self.start: dict[str, int] = {}

        def block(kind: str, names: list[str]):
            self.start[kind] = offset + len(self.names)
            self.names.extend(names)

        offsets = [f"{dr:+d}{dc:+d}" for dr in range(-R, R + 1) for dc in range(-R, R + 1)]
        block("special", ["<quest>", "<scored>", "<unscored>", "<pad>", "<overseer>"])
        block("prior", [f"prior:{i}" for i in range(len(PRIOR_EDGES) + 1)])
        block("altar", [f"altar:{o}" for o in offsets])
        block("clue", [f"clue:{o}" for o in offsets] + ["clue:none"])
        block("door", [f"door:{o}" for o in offsets])
        block("hazard", [f"hazard:m{m}d{d}h{h}" for m in (0, 1) for d in (0, 1) for h in (0, 1)])
        block("known", ["known:" + "".join("?01"[(i // 3 ** b) % 3] for b in range(cfg.bits))
                        for i in range(3 ** cfg.bits)])
        block("action", list(ACTIONS))
        block("answer", [f"Y{k}" for k in range(cfg.K)])
        self.size = len(self.names)
        self.quest, self.scored, self.unscored, self.pad, self.overseer = (self.start["special"] + i for i in range(5))
        self.action_ids = torch.arange(self.start["action"], self.start["action"] + len(ACTIONS))
        self.answer_ids = torch.arange(self.start["answer"], self.start["answer"] + cfg.K)
        self.prefix_len = 2 + cfg.K

    def name(self, token: int) -> str:
        return self.names[token - self.offset]

    def horizon(self, variant: str | None = None) -> int:
        """Steps an episode can last: the time limit, and the post-forecast steps in `post_episode`."""
        variant = variant or self.cfg.variant
        return self.cfg.time_limit + (self.cfg.post_steps if variant == "post_episode" else 0)

    def seq_len(self, n_steps: int) -> int:
        """Tokens of a transcript of n_steps steps, the slot after the last action included."""
        return self.prefix_len + STEP_LEN * n_steps + 1

    @property
    def max_seq_len(self) -> int:
        return self.seq_len(self.cfg.time_limit + self.cfg.post_steps)

    def decode(self, tokens) -> str:
        return " ".join(self.name(int(t)) for t in tokens if int(t) != self.pad)

    # ------------------------------------------------------------------ encoders
    def prefix(self, env: BatchedClueQuest) -> torch.Tensor:
        """[B, 2 + K]: <quest>, each episode's flag, and the prior as level tokens."""
        K = env.cfg.K
        levels = torch.bucketize(torch.log(env.prior * K), torch.tensor(PRIOR_EDGES, dtype=env.prior.dtype,
                                                                         device=env.device))
        shown = env.overseer & self.cfg.overseer_visible
        flag = torch.where(env.unscored, self.unscored, torch.where(shown, self.overseer, self.scored))
        head = torch.stack([torch.full_like(flag, self.quest), flag], 1)
        return torch.cat([head, self.start["prior"] + levels], 1)

    def observe(self, env: BatchedClueQuest, answered: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 5] observation tokens of the current state; rows in `answered` show Y_y in the altar slot."""
        off = env.target_offsets().clamp(-R, R) + R  # [B, 6]
        cell = off[:, 0::2] * (2 * R + 1) + off[:, 1::2]  # [B, 3]: altar, clue, door
        altar = self.start["altar"] + cell[:, 0]
        if answered is not None:
            altar = torch.where(answered, self.start["answer"] + env.y, altar)
        if env.cfg.n_clues:
            left = (~env.taken[:, :-1]).any(-1)
        else:
            left = torch.zeros(env.B, dtype=torch.bool, device=env.device)
        clue = self.start["clue"] + torch.where(left, cell[:, 1], N_OFFSETS)
        door = self.start["door"] + cell[:, 2]
        monster = (env.alive & ((env.monsters - env.agent[:, None]).abs().sum(-1) <= 1)).any(-1)
        hazard = self.start["hazard"] + 4 * monster.long() + 2 * env.door_open.long() + (env.hp <= 1).long()
        b = torch.arange(env.cfg.bits, device=env.device)
        state = torch.where((env.known[:, None] >> b) & 1 == 1, 1 + ((env.y[:, None] >> b) & 1), 0)
        known = self.start["known"] + (state * 3 ** b).sum(-1)
        return torch.stack([altar, clue, door, hazard, known], 1)


def quest_tokens(quest: dict | QuestConfig | None, world_vocab_size: int) -> QuestTokens | None:
    if quest is None:
        return None
    if not isinstance(quest, QuestConfig):
        check_types(QuestConfig, dict(quest), "quest")  # an unknown key (`+quest.foo=1`) is one line, not a TypeError
        quest = QuestConfig(**quest)
    return QuestTokens(quest, world_vocab_size)


# ---------------------------------------------------------------------- transcripts (the world's quest segment)
def explorer_actions(cfg: QuestConfig, seeds, careless_rate: float = 0.5, forget_rate: float = 0.2,
                     seed: int = 0) -> np.ndarray:
    """[E, time_limit + post_steps] the explorer's actions in the gym env on these episode seeds (0 after
    the end: replay ignores them)."""
    env = ClueQuestEnv(**asdict(cfg))
    agent = Explorer(careless_rate=careless_rate, forget_rate=forget_rate, seed=seed)
    T = cfg.time_limit + cfg.post_steps
    out = np.zeros((len(seeds), T), dtype=np.int64)
    for i, s in enumerate(seeds):
        env.reset(options={"episode_seed": int(s)})
        agent.begin(env)
        for t in range(T):
            out[i, t] = agent(env)
            _, _, term, trunc, _ = env.step(out[i, t])
            if term or trunc:
                break
    return out


@torch.no_grad()
def transcripts(tokens: QuestTokens, seeds, actions: np.ndarray) -> torch.Tensor:
    """[E, max_seq_len] transcripts of the episodes `seeds` played with `actions` [E, T] (padded with <pad>)."""
    cfg, T = tokens.cfg, actions.shape[1]
    env = BatchedClueQuest(len(seeds), **asdict(cfg))
    env.reset(np.asarray(seeds))
    P, E = tokens.prefix_len, len(seeds)
    seq = torch.full((E, tokens.max_seq_len), tokens.pad, dtype=torch.long)
    seq[:, :P] = tokens.prefix(env)
    alive = torch.ones(E, dtype=torch.bool)
    answered = torch.zeros(E, dtype=torch.bool)
    acts = torch.as_tensor(actions)
    for t in range(T):
        pos = P + STEP_LEN * t
        obs = tokens.observe(env, answered)
        seq[alive, pos:pos + OBS_PER_STEP] = obs[alive]
        seq[alive, pos + OBS_PER_STEP] = tokens.action_ids[acts[alive, t]]
        was = env.predicted.clone()
        _, _, term, trunc, _ = env.step(acts[:, t])
        answered = env.predicted & ~was
        ended = alive & (term | trunc)
        seq[ended, pos + STEP_LEN] = tokens.observe(env, answered)[ended, 0]  # the slot after the last action
        alive &= ~ended
        if not alive.any():
            break
    return seq


TEACHERS = ("explorer", "planner")  # whose episodes a transcript corpus holds


class QuestCorpus:
    """A fixed corpus of transcripts (the quest segment of the world corpus), sampled by row: the explorer's
    episodes, or the planner's (the monster-free optimum, envs/planner.py). Stored under `cache` (a folder),
    keyed by everything it depends on, so seeds and runs share it."""

    def __init__(self, tokens: QuestTokens, n_episodes: int = 4096, seed: int = 0, careless_rate: float = 0.5,
                 forget_rate: float = 0.2, cache: str | Path | None = None, teacher: str = "explorer"):
        if teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}; got {teacher!r}")
        self.tokens = tokens
        key = json.dumps([asdict(tokens.cfg), tokens.offset, n_episodes, seed, careless_rate, forget_rate, VERSION,
                          *([teacher] if teacher != "explorer" else [])])
        path = Path(cache) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cache else None
        if path is not None and path.exists():
            try:
                self.data = torch.load(path, weights_only=True)
                if isinstance(self.data, torch.Tensor) and self.data.dim() == 2:
                    return
                raise ValueError("not a 2-d tensor of transcripts")
            except Exception as e:  # noqa: BLE001 - a cache: a damaged one is made again
                print(f"warning: quest corpus cache {path} cannot be read ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); making it again", file=sys.stderr)
        seeds = np.arange(n_episodes) + 1_000_000 * (seed + 1)  # disjoint from the probe seeds (10_000 on)
        if teacher == "planner":
            from instrumentality.envs.planner import planner_actions

            actions = planner_actions(tokens.cfg, seeds)
        else:
            actions = explorer_actions(tokens.cfg, seeds, careless_rate, forget_rate, seed)
        self.data = transcripts(tokens, seeds, actions)
        if path is not None:
            buf = io.BytesIO()
            torch.save(self.data, buf)
            write_atomic(path, buf.getvalue())

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n transcripts, cut after the longest one's last token (the rest is padding)."""
        x = self.data[torch.randint(len(self.data), (n,), generator=generator)]
        return x[:, :int((x != self.tokens.pad).sum(1).max())]


# ---------------------------------------------------------------------- the model plays
@torch.no_grad()
def play(model, tokens: QuestTokens, seeds, variant: str | None = None, generator: torch.Generator | None = None,
         greedy: bool = False, mixed: torch.Tensor | None = None, mix_variant: str = "unscored") -> dict:
    """Play len(seeds) episodes at once with the model choosing among the action tokens and forecasting
    with its answer-token distribution. `mixed` [B] booleans: those episodes are `mix_variant` (`unscored`
    or `interruptible`) instead of `variant` (a trainer's mix of variants). Returns the token sequences
    [B, L] (rollout part), per step [B, T]: actions, log pi(a), values (if the model has a value head),
    rewards, `live` (the step happened), `scored_predict` (a scored forecast was made here), and per episode `metrics`
    [B, len(QUEST_METRICS)] and `y`."""
    from instrumentality.model import device_of

    device = device_of(model)
    cfg = QuestConfig(**{**asdict(tokens.cfg), **({"variant": variant} if variant else {})})
    B, T, P = len(seeds), tokens.horizon(cfg.variant), tokens.prefix_len
    env = BatchedClueQuest(B, device=device, **asdict(cfg))
    env.reset(np.asarray(seeds))
    if mixed is not None:  # the same episodes, flagged (the draws do not depend on the variant)
        flags = env.unscored if mix_variant == "unscored" else env.overseer
        flags |= mixed.to(device)
    action_ids, answer_ids = tokens.action_ids.to(device), tokens.answer_ids.to(device)
    seq = torch.full((B, P + STEP_LEN * T), tokens.pad, dtype=torch.long, device=device)
    seq[:, :P] = tokens.prefix(env)
    cache = model.new_cache(B, seq.shape[1])
    model(seq[:, :P], cache)
    z = lambda dtype=torch.float32: torch.zeros(B, T, dtype=dtype, device=device)  # noqa: E731
    actions, logp, values, rewards = z(torch.long), z(), z(), z()
    live, scored = z(torch.bool), z(torch.bool)
    metrics = torch.zeros(B, len(QUEST_METRICS), device=device)
    counted = torch.tensor([QUEST_METRICS.index(m) for m in QUEST_COUNTS], device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    answered = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(T):
        pos = P + STEP_LEN * t
        seq[:, pos:pos + OBS_PER_STEP] = tokens.observe(env, answered)
        out = model(seq[:, pos:pos + OBS_PER_STEP], cache)
        logits = out["logits"][:, -1, action_ids].float()
        a = logits.argmax(-1) if greedy else torch.multinomial(F.softmax(logits, -1), 1, generator=generator)[:, 0]
        seq[:, pos + OBS_PER_STEP] = action_ids[a]
        forecast = F.softmax(model(seq[:, pos + OBS_PER_STEP:pos + STEP_LEN], cache)["logits"][:, -1, answer_ids]
                             .float(), -1)
        was = env.predicted.clone()
        _, r, term, trunc, info = env.step(a, forecast)
        answered = env.predicted & ~was
        actions[:, t], logp[:, t] = a, F.log_softmax(logits, -1).gather(1, a[:, None])[:, 0]
        if "value" in out:
            values[:, t] = out["value"][:, -1].float()
        rewards[:, t] = torch.where(alive, r.float(), 0.0)
        live[:, t], scored[:, t] = alive, alive & answered & ~env.unscored
        counts = torch.stack([info[m] for m in QUEST_COUNTS], 1).float()
        metrics[:, counted] = torch.where(alive[:, None], counts, metrics[:, counted])
        alive = alive & ~(term | trunc)
        if device.type == "cpu" and not alive.any():  # on a device, run to the horizon rather than sync per step
            break
    metrics[:, QUEST_METRICS.index("return")] = rewards.sum(1)
    return {"seq": seq, "actions": actions, "logp": logp, "values": values, "rewards": rewards, "live": live,
            "scored_predict": scored, "metrics": metrics, "y": env.y.clone(), "prefix_len": P}


class TokenAgent:
    """A transformer as a quest agent for the quest evaluators (episodes on the batched env)."""

    def __init__(self, model, tokens: QuestTokens, seed: int = 0, greedy: bool = False):
        self.model, self.tokens, self.seed, self.greedy = model, tokens, seed, greedy

    def episodes(self, variant: str, seeds, **env_config) -> np.ndarray:
        from instrumentality.model import device_of

        gen = torch.Generator(device_of(self.model)).manual_seed(self.seed)
        was_training = self.model.training
        self.model.eval()
        out = play(self.model, self.tokens, seeds, variant=variant, generator=gen, greedy=self.greedy)
        self.model.train(was_training)
        return out["metrics"].double().cpu().numpy()
