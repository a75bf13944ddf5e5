"""Facts from the installed countryinfo and babel, relation templates, and fact-file readers."""

import json

import pytest

from inversionview.factual.knowledge import (RELATIONS, FactError, Knowledge, Relation,
                                              check_relations)
from inversionview.factual.readers import read_facts


@pytest.fixture(scope="module")
def knowledge():
    return Knowledge.load()


def test_the_knowledge_is_countries_and_their_capitals(knowledge):
    france, paris = knowledge.subject("France"), knowledge.subject("Paris")
    assert france.kind == "country" and paris.kind == "city"
    assert france.attributes == {"country": "France", "capital": "Paris", "language": "French",
                                 "currency": "Euro", "region": "Europe"}
    assert paris.attributes == france.attributes  # a city's attributes are its country's
    assert knowledge.subject("Japan").attributes["language"] == "Japanese"
    kinds = [s.kind for s in knowledge.subjects.values()]
    assert kinds.count("country") > 200 and kinds.count("city") > 200
    # one answer per prompt: no name is both a country and a city, or two cities
    assert "Singapore" not in [s.name for s in knowledge.subjects.values() if s.kind == "city"]


def test_prompts_split_by_template_and_end_before_the_answer(knowledge):
    train, held_out = knowledge.prompts("train"), knowledge.prompts("eval")
    assert not {p.template for p in train} & {p.template for p in held_out}
    assert len(knowledge.prompts("all")) == len(train) + len(held_out)
    by_key = {(p.subject, p.relation): p for p in held_out}
    language = by_key[("Germany", "language")]
    assert language.text == "In Germany people speak" and language.answer == "German"
    assert language.text[:language.subject_end].endswith("Germany")
    assert by_key[("Berlin", "country")].answer == "Germany"
    assert ("Berlin", "capital") not in by_key  # a city has no capital relation
    assert "The capital of France is Paris." in knowledge.sentences("train")
    # every relation reads an attribute each of its subjects has
    for prompt in train + held_out:
        assert prompt.answer == prompt.attributes[RELATIONS[prompt.relation].attribute]
        assert not prompt.text.endswith(" ")


def test_eval_templates_are_new_wordings_of_words_the_train_templates_use():
    def words(template):
        return set(template.replace("{subject}", " ").split())

    known = set().union(*(words(t) for r in RELATIONS.values() for t in r.train))
    for relation in RELATIONS.values():
        for template in relation.eval:
            assert words(template) <= known, (template, words(template) - known)
            assert template not in relation.train


def test_bad_relations_splits_and_templates_are_clear_errors(knowledge):
    with pytest.raises(FactError, match="unknown relation 'birthplace'; relations with templates: capital"):
        check_relations(["capital", "birthplace"])
    with pytest.raises(FactError, match="unknown split 'test'"):
        knowledge.prompts("test")
    with pytest.raises(FactError, match="unknown subject 'Atlantis'"):
        knowledge.subject("Atlantis")
    with pytest.raises(FactError, match="must name {subject} exactly once"):
        Relation("r", "country", ("city",), train=("no subject here",), eval=())


def test_readers_of_counterfact_known_1000_and_bear(tmp_path):
    counterfact = tmp_path / "counterfact.json"
    counterfact.write_text(json.dumps([{"case_id": 0, "requested_rewrite": {
        "prompt": "The mother tongue of {} is", "relation_id": "P103", "subject": "Danielle Darrieux",
        "target_new": {"str": "English"}, "target_true": {"str": "French"}}}]))
    (prompt,) = read_facts(counterfact)
    assert (prompt.text, prompt.answer, prompt.relation) == (
        "The mother tongue of Danielle Darrieux is", "French", "P103")
    assert prompt.template == "The mother tongue of {subject} is" and prompt.split == "eval"

    known = tmp_path / "known_1000.json"
    known.write_text(json.dumps([{"known_id": 0, "subject": "Vinson Massif", "attribute": "Antarctica",
                                  "template": "{} is located in the continent of",
                                  "prediction": " Antarctica", "relation_id": "P30",
                                  "prompt": "Vinson Massif is located in the continent of"}]))
    (prompt,) = read_facts(known)
    assert prompt.answer == "Antarctica" and prompt.text.index("Vinson Massif") == 0

    bear = tmp_path / "BEAR"
    bear.mkdir()
    (bear / "metadata_relations.json").write_text(json.dumps(
        {"P36": {"templates": ["The capital of [X] is [Y].", "[X]'s capital is [Y]."]}}))
    (bear / "P36.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"sub_label": "Norway", "obj_label": "Oslo", "predicate_id": "P36"},
        {"sub_label": "Chile", "obj_label": "Santiago", "predicate_id": "P36"}]) + "\n")
    prompts = read_facts(bear)
    assert [(p.text, p.answer) for p in prompts] == [("The capital of Norway is", "Oslo"),
                                                     ("The capital of Chile is", "Santiago")]
    assert len(read_facts(bear, limit=1)) == 1


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON"),
    ('{"a": 1}', "is not a list of fact records"),
    ('[{"question": "x", "answer": "y"}]', "unknown fact format .* keys 'answer, question'"),
    ('[{"requested_rewrite": {"prompt": "The tongue of {} is", "subject": "X"}}]',
     "record 0 is not a counterfact record"),
    ('[{"subject": "Mars", "attribute": "red", "prompt": "Its colour is"}]',
     "record 0 is not a known_1000 record .*not in the prompt"),
])
def test_unknown_or_broken_fact_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "facts.json"
    path.write_text(content)
    with pytest.raises(FactError, match=message):
        read_facts(path)


def test_missing_files_and_broken_bear_directories(tmp_path):
    with pytest.raises(FactError, match="no fact file at"):
        read_facts(tmp_path / "absent.json")
    with pytest.raises(FactError, match="without metadata_relations.json"):
        read_facts(tmp_path)
    (tmp_path / "metadata_relations.json").write_text('{"P1": {"templates": ["[X] is [Y]."]}}')
    with pytest.raises(FactError, match="has no P1.jsonl"):
        read_facts(tmp_path)
    (tmp_path / "P1.jsonl").write_text('{"sub_label": "a"}\n')
    with pytest.raises(FactError, match="line 1 is not a BEAR fact"):
        read_facts(tmp_path)
