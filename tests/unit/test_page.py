"""The report page's data from the live stores (pure: the stores' contents as given)."""

from __future__ import annotations

from firstmile.flows.page import from_live, render


def test_the_live_page_reads_profiles_models_and_each_versions_sizes() -> None:
    profiles = [
        {"segment": "seg-1", "onboarding_path": "short_tour", "last_triggers": [{"rule_id": "a"}]},
        {"segment": "seg-1", "onboarding_path": "short_tour", "last_triggers": []},
        {"segment": "seg-2", "onboarding_path": "guided_walkthrough", "last_triggers": [
            {"rule_id": "a"}, {"rule_id": "b"}, {"rule_id": "a"}]},
    ]  # fmt: skip
    models = {
        "segments": [
            {"id": "seg-1", "label": "power users", "size": 2, "description": "x +1 sd"},
            {"id": "seg-2", "label": "needs help", "size": 1, "description": "y +2 sd"},
        ],
        "churn": {"version": "churn-v3", "roc_auc": 0.8, "reliability": [[0.1, 0.12, 40]]},
    }
    sizes = {
        "seg-1": {"label": "power users", "size": 5},
        "seg-2": {"label": "needs help", "size": 3},
    }
    history = [
        {"created_at": "2026-03-02T01:00:00.000Z", "segments": {}},
        {"created_at": "2026-03-02T02:00:00.000Z", "segments": sizes},
    ]
    data = from_live(profiles, models, history, {}, "firstmile (live)")
    assert data.title == "firstmile (live): 3 users"
    assert data.paths == {
        "needs help": {"guided_walkthrough": 1},
        "power users": {"short_tour": 2},
    }
    assert data.triggers == {"a": {"users": 2}, "b": {"users": 1}}  # users, not triggers
    assert data.sizes == {"2026-03-02T02:00:00.000Z": {"power users": 5, "needs help": 3}}
    page = render(data)
    for title in ("Segment sizes over time", "Onboarding paths per segment", "Triggers by rule",
                  "Churn model calibration"):  # fmt: skip
        assert f"<h2>{title}</h2>" in page
    assert page.count("Plotly.newPlot(") == 4 and "y +2 sd" in page
