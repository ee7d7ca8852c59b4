"""table1.md: a row is labelled the paper's recipe only when nothing was cut."""

from mmru.report_markdown import describe, recipe_of, shortened, write_markdown


def _summary(dataset="mnist", epochs=100, points=1000, mip=True, mip_limit=120.0):
    return {"run": {"dataset": dataset, "seed": 0}, "n_points": points,
            "recipe": {"epochs": epochs, "mip": mip, "mip_time_limit": mip_limit, "attack": "strong",
                       "hardware": "cpu", "train_seconds": 600.0, "certify_seconds": 120.0, "commit": "abc"}}


def test_only_the_full_recipe_is_the_papers():
    assert shortened(recipe_of(_summary())) == []
    assert describe(recipe_of(_summary())).startswith("paper's recipe")
    assert shortened(recipe_of(_summary(dataset="mnist5k"))) == ["data: 5000-image MNIST subset"]
    assert shortened(recipe_of(_summary(epochs=5))) == ["5 of 100 epochs"]
    assert shortened(recipe_of(_summary(points=200))) == ["200 of 1000 points"]
    assert shortened(recipe_of(_summary(mip_limit=10.0))) == ["MIP 10.0 s of 120 s"]
    assert shortened(recipe_of(_summary(mip=False))) == ["MIP 0.0 s of 120 s"]
    # a fine-tune names its start, whatever its epochs
    tuned = _summary(epochs=100)
    tuned["run"]["init_from"] = {"path": "/zoo/mmr_univ_mnist.mat", "md5": "ebe4"}
    assert shortened(recipe_of(tuned)) == ["fine-tuned from mmr_univ_mnist.mat for 100 epochs"]
    assert "fine-tuned from mmr_univ_mnist.mat (md5 ebe4), full data" in describe(recipe_of(tuned))
    # a cut no setting records, written into the recipe by hand, labels the row too
    stopped = _summary()
    stopped["recipe"]["cuts"] = ["l1 exact stage on 76 of 184 undecided points"]
    assert shortened(recipe_of(stopped)) == ["l1 exact stage on 76 of 184 undecided points"]
    assert describe(recipe_of(stopped)).startswith("SHORTENED (l1 exact stage on 76 of 184 undecided points)")
    # a summary without a recipe (older runs) is never taken for the paper's setting
    bare = recipe_of({"run": {"dataset": "mnist", "seed": 0}, "n_points": 1000})
    assert "? of 100 epochs" in shortened(bare)


def test_markdown_has_cells_and_recipes(tmp_path):
    record = {"dataset": "mnist", "model": "MMR-Universal", "te": "3.10", "te_paper": "3.04", "worst_ub": "22.0",
              "worst_ub_paper": "20.8", "union_ub": "25.0", "union_ub_paper": "", "notes": "",
              "recipe": describe(recipe_of(_summary(epochs=5)))}
    write_markdown([record], ["te", "worst_ub", "union_ub"], {"te": "TE", "worst_ub": "worst UB",
                                                              "union_ub": "union UB"}, tmp_path / "t.md")
    text = (tmp_path / "t.md").read_text()
    assert "| MMR-Universal | 3.10 (3.04) | 22.0 (20.8) | 25.0 |" in text
    assert "SHORTENED (5 of 100 epochs)" in text
