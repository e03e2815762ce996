"""What end-to-end tests share about the world they run in: the test's config file edited as
a person would edit it (the autouse fixture points ``STSYNC_CONFIG`` at it), and the
campaign's referred leads as the sandbox holds them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stsync.storage.config import load_config
from stsync.storage.config_writer import save_config


def edit_config(change: Callable[[Any], object], path: Path | None = None) -> None:
    """Load the config (the test's own unless ``path``), apply ``change``, save it."""
    path = path or Path(os.environ["STSYNC_CONFIG"])
    config = load_config(path)
    change(config)
    save_config(config, path)


def raise_limits(*, st_per_second: int, rf_per_minute: int) -> None:
    """``[limits]`` as high as the sandbox's, so a test is bound by the machine, not the limits."""

    def change(config: Any) -> None:
        config.limits.servicetitan_per_second = st_per_second
        config.limits.referral_factory_per_minute = rf_per_minute

    edit_config(change)


def leads_of(sb: Any, campaign_id: int | None = None, type: str = "person_invited") -> list[dict]:
    """The referred leads (or, with ``type``, other users) of the campaign (the connected one
    unless ``campaign_id``), as the sandbox holds them."""
    return sb.rf_users(campaign_id=campaign_id or sb.credentials.campaign_id, type=type)
