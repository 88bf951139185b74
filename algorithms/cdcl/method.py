"""MSL + Mov (Simon et al., CVPR 2022) on the phase engine: one phase per experience.

Experience i (phase ``exp{i}``) trains on ``data.phase_classes.exp{i}`` / ``data.phase_sources.exp{i}``.
At its start ``configure_model`` freezes a copy of the model as the distillation teacher (i >= 1)
and appends head rows for the classes not seen yet; on resume the engine replays this before the
weights (teacher included) load. Loss: ``ce_weight * CE`` over every class seen so far (one head,
no task id) ``+ kd_weight * KD`` over the old classes, then the moving average (``mov.py``). At its
end the engine evaluates ``test`` and ``unseen`` (``algorithm.unseen_split``), one pass each, with an
accuracy per experience so far: ``acc_exp{j}`` on j's classes in j's training domains,
``acc_exp{j}_heldout`` on j's classes in domains no experience trains on (``data.holdout_domain``'s
test rows, the unseen split). The phase × set matrix thus holds the experience × experience
accuracy matrices; ``report.py`` turns them into average accuracy and forgetting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from algorithms.cdcl.heads import LinearHead, MahalanobisHead
from algorithms.cdcl.model import ContinualNet
from algorithms.cdcl.mov import distillation, ema_, smooth_, snapshot
from algorithms.cdcl.replay import Reservoir, gather_rows
from algorithms.cdcl.report import ContinualReport
from framework import Algorithm, Capabilities
from framework.evalsets import EvalSet
from framework.models import build_backbone
from framework.phases import Phase

CHOICES = {"head": ("msl", "linear"), "mov_mode": ("param_smoothing", "ema_teacher", "none")}


class CDCL(Algorithm):
    # every head row enters the softmax over the classes seen so far at every step and the teacher
    # does not train, so DDP sees a gradient for every trainable parameter: no unused parameters
    capabilities = Capabilities(strategies=("single", "ddp"), find_unused_parameters=False)

    def __init__(self, config, full_config=None):
        super().__init__(config, full_config)
        for key, allowed in CHOICES.items():
            if getattr(config, key) not in allowed:
                raise ValueError(f"algorithm.{key}: '{getattr(config, key)}' is not one of {', '.join(allowed)}")
        self.buffer = Reservoir(config.buffer_size, int(full_config.trainer.seed) if full_config else 0)
        self._before: list = []
        self._sets: list[EvalSet] = []

    # ------------------------------------------------------------------ the experience sequence
    def _data_opt(self, key: str) -> dict:
        data = self.full_config.data if self.full_config is not None else {}
        return dict(data.get(key) or {})

    def phases(self):
        c, names = self.config, [f"exp{i}" for i in range(self.config.experiences)]
        for key in ("phase_classes", "phase_sources"):
            unknown = sorted(set(self._data_opt(key)) - set(names))
            if unknown:
                raise ValueError(f"data.{key}: {unknown} are not experiences of algorithm=cdcl "
                                 f"(algorithm.experiences={c.experiences}: {', '.join(names)})")
        sets = ("test",) + (("unseen",) if c.unseen_split else ())
        return [Phase(name, steps=c.steps_per_experience or None, data=name, eval_sets=sets) for name in names]

    def _task(self, info) -> str:
        if self.config.task:
            if self.config.task not in info.tasks:
                raise ValueError(f"algorithm.task: '{self.config.task}' is not a task of {info.name} "
                                 f"(tasks: {list(info.tasks)})")
            return self.config.task
        if len(info.tasks) != 1:
            raise ValueError(f"algorithm.task: {info.name} has tasks {list(info.tasks)}; name the one whose "
                             f"classes arrive over time")
        return next(iter(info.tasks))

    def experience_classes(self, i: int) -> list[int]:
        """The classes experience ``i`` trains on (``data.phase_classes.exp{i}.<task>``, default all)."""
        chosen = self._data_opt("phase_classes").get(f"exp{i}")
        if chosen is None or self.task not in chosen:
            return list(range(self.info.tasks[self.task]))
        return [int(c) for c in chosen[self.task]]

    def _domain_ids(self, sources) -> tuple[int, ...]:
        domains = list(self.info.extra.get("domains", []))
        missing = [s for s in sources if s not in domains]
        if missing:
            raise ValueError(f"{self.info.name}: sources {missing} are not among its domains {domains}; the "
                             f"evaluation sets select test rows by domain")
        return tuple(domains.index(s) for s in sources)

    def _plan_evaluation(self) -> None:
        """Per experience j, which rows ``acc_exp{j}`` scores: j's classes in j's own training domains;
        ``acc_exp{j}_heldout``: j's classes in any domain no experience trains on (the held-out one in
        ``test``, every row of ``algorithm.unseen_split``)."""
        train = list(self.info.extra.get("train_sources", []))
        has_domains = bool(self.info.extra.get("domains"))
        sources = self._data_opt("phase_sources")
        self._classes = [torch.as_tensor(self.experience_classes(j)) for j in range(self.config.experiences)]
        self._train_domains = torch.as_tensor(self._domain_ids(train)) if has_domains else None
        self._exp_domains = [torch.as_tensor(self._domain_ids(list(sources.get(f"exp{j}", train))))
                             for j in range(self.config.experiences)] if has_domains else None
        self._sets = [EvalSet("unseen", self.config.unseen_split)] if self.config.unseen_split else []

    def eval_sets(self):
        return self._sets

    def groups(self) -> dict[str, tuple[str, str]]:
        """Where ``a[t][j]`` lives in the phase × set matrix, per group (``framework.metrics.continual``)."""
        t = self.task
        return {"seen": ("test", f"{t}/acc_exp{{}}"), "heldout": ("test", f"{t}/acc_exp{{}}_heldout"),
                "unseen": ("unseen", f"{t}/acc_exp{{}}_heldout")}

    def callbacks(self):
        return [ContinualReport(self.groups)]  # called at the end, once the task is known

    # ----------------------------------------------------------------------------- the model
    def build_model(self, data_info):
        c = self.config
        self.info, self.task = data_info, self._task(data_info)
        self._plan_evaluation()
        backbone = build_backbone(self.full_config.model, data_info.image_shape[0])
        shape = None
        if c.flatten:
            if not c.neck:
                raise ValueError("algorithm.flatten=true feeds the flattened last stage to the neck: set "
                                 "algorithm.neck > 0, or algorithm.flatten=false for the pooled features")
            with torch.no_grad():
                probe = backbone.forward_features(torch.zeros(2, *data_info.image_shape))
            shape = tuple(probe[backbone.stage_names[-1]].shape[1:])
        dim = c.neck or backbone.out_dim
        head = (MahalanobisHead(dim, c.msl_rank, c.msl_sign, c.msl_temperature) if c.head == "msl"
                else LinearHead(dim))
        return ContinualNet(backbone, c.neck, head, shape)

    def configure_model(self, phase, model, ctx):
        index = int(phase[len("exp"):])
        if index > 0 and (self.config.distill or self.config.mov_mode == "ema_teacher"):
            model.freeze_teacher()
        model.add_classes(self.experience_classes(index))
        return model

    # ------------------------------------------------------------------------------ training
    def training_step(self, model, batch, ctx):
        c, net = self.config, ctx.unwrap(model)
        images, labels = batch["image"], batch["labels"][self.task]
        if ctx.micro == 0 and c.mov_mode == "param_smoothing" and ctx.phase_index > 0:
            self._before = snapshot(net)
        fresh = (images, labels)
        if len(self.buffer):
            old_x, old_y = self.buffer.sample(c.replay_batch, ctx.global_step, ctx.rank)
            images = torch.cat([images, old_x.to(images.device)])
            labels = torch.cat([labels, old_y.to(labels.device)])
        logits = model(images)
        target = net.columns(labels)
        keep = target >= 0
        losses = {"ce": c.ce_weight * F.cross_entropy(logits[keep], target[keep]) if keep.any()
                  else logits.sum() * 0.0}
        if net.teacher is not None and c.distill and c.kd_weight > 0:
            with torch.no_grad():
                teacher_logits = net.teacher(images)
            losses["kd"] = c.kd_weight * distillation(logits, teacher_logits, c.kd_temperature)
        if c.buffer_size:
            self.buffer.add(gather_rows(fresh[0], ctx), gather_rows(fresh[1], ctx), ctx.global_step)
        return losses

    def after_step(self, model, ctx):
        c, net = self.config, ctx.unwrap(model)
        if self._before:
            smooth_(self._before, c.mov_gamma)
            self._before = []
        if c.mov_mode == "ema_teacher" and net.teacher is not None:
            ema_(net.teacher, net, c.ema_alpha)

    # ---------------------------------------------------------------------------- evaluation
    def build_metrics(self, data_info):
        """``acc`` (every row), ``acc_seen`` (rows of the classes seen so far), and per experience
        ``acc_exp{j}`` / ``acc_exp{j}_heldout`` (see ``_plan_evaluation``): one pass over a split
        fills its row of every accuracy matrix."""
        from framework.metrics import Accuracy

        task = self._task(data_info)
        names = ["acc", "acc_seen"]
        for j in range(self.config.experiences):
            names += [f"acc_exp{j}", f"acc_exp{j}_heldout"]
        return {f"{task}/{name}": Accuracy() for name in names}

    def evaluate(self, model, batch, metrics, ctx):
        net, task = ctx.unwrap(model), self.task
        labels = batch["labels"][task]
        mask = batch.get("mask", torch.ones_like(labels, dtype=torch.bool))
        pred = net.classes[model(batch["image"]).argmax(-1)]
        metrics[f"{task}/acc"].update(pred, labels, mask)
        metrics[f"{task}/acc_seen"].update(pred, labels, mask & torch.isin(labels, net.classes))
        other = torch.zeros_like(mask)
        if self._train_domains is not None:
            other = ~torch.isin(batch["domain"], self._train_domains.to(labels.device))
        for j in range(ctx.phase_index + 1):  # experiences trained so far
            keep = mask & torch.isin(labels, self._classes[j].to(labels.device))
            own = keep & ~other
            if self._exp_domains is not None:
                own &= torch.isin(batch["domain"], self._exp_domains[j].to(labels.device))
            metrics[f"{task}/acc_exp{j}"].update(pred, labels, own)
            metrics[f"{task}/acc_exp{j}_heldout"].update(pred, labels, keep & other)

    def state_dict(self):
        return {"buffer": self.buffer.state_dict()} if self.config.buffer_size else {}

    def load_state_dict(self, state):
        if "buffer" in state:
            self.buffer.load_state_dict(state["buffer"])
