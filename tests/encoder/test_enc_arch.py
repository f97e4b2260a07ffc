"""Layer methods on any Hugging Face encoder: the layer stack and the query/key/value projections are
found from each model's own modules (BERT, RoBERTa, XLM-R, MPNet, DistilBERT, tiny local configs of
the real classes), the tapped tensors are what the model computes (checked against the model's own
modules and its own attention probabilities), and weight inheritance builds students of each class."""
import pytest
import torch

from distill.errors import ConfigError
from distill.families.encoder.config import EncoderStudentConfig
from distill.families.encoder.losses import attention_logprobs
from distill.families.encoder.models import SentenceEncoder
from distill.families.encoder.students import build_student
from distill.registry import methods
from distill.taps import Taps
from distill.teacher import Teacher
from enc_helpers import batch

ARCHS = ["bert", "roberta", "xlm-roberta", "mpnet", "distilbert"]


def tiny(arch: str, layers: int = 3, seed: int = 0):
    """A tiny randomly initialised model of the real transformers class, eager attention (so that
    output_attentions returns the probabilities the layer computed)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=64, max_position_embeddings=64, pad_token_id=0)
    if arch == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=64, dropout=0.0,
                                  attention_dropout=0.0, **common)
    else:
        cls = {"bert": tf.BertConfig, "roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig,
               "mpnet": tf.MPNetConfig}[arch]
        cfg = cls(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=64,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **common)
    return tf.AutoModel.from_config(cfg, attn_implementation="eager").eval()


EXPECTED = {"bert": ("encoder.layer", "attention.self.query"), "roberta": ("encoder.layer", "attention.self.query"),
            "xlm-roberta": ("encoder.layer", "attention.self.query"), "mpnet": ("encoder.layer", "attention.attn.q"),
            "distilbert": ("transformer.layer", "attention.q_lin")}


@pytest.mark.parametrize("arch", ARCHS)
def test_taps_are_the_projections_the_model_computes(arch):
    enc = SentenceEncoder(tiny(arch))
    stack, q_name = EXPECTED[arch]
    assert enc.layer_module(1, "query") == f"backbone.{stack}.1.{q_name}"
    b = batch(4)
    names = [enc.layer_module(i, k) for i in range(3) for k in ("query", "key", "value")]
    with torch.no_grad(), Taps(enc, names) as tp:
        out = enc.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True,
                           output_attentions=True)
        taps = dict(tp.outputs)
    layers = dict(enc.backbone.named_modules())[stack]
    for i in range(3):
        h_in = out.hidden_states[i]  # the input of layer i, as the model itself reports it
        attn = dict(layers[i].named_modules())
        for kind in ("query", "key", "value"):
            rel = enc.layer_module(i, kind)[len(f"backbone.{stack}.{i}."):]
            assert torch.allclose(taps[enc.layer_module(i, kind)], attn[rel](h_in), atol=1e-6), (arch, i, kind)
        if arch == "mpnet":
            continue  # MPNet adds a relative position bias to Q K^T: its probabilities are not softmax(QK^T/sqrt d)
        # softmax(Q K^T / sqrt(d) + key mask) from the taps == the attention probabilities the model returns
        p = attention_logprobs(taps[enc.layer_module(i, "query")], taps[enc.layer_module(i, "key")], 4,
                               b["attention_mask"]).exp()
        assert torch.allclose(p, out.attentions[i], atol=1e-5), (arch, i)


@pytest.mark.parametrize("arch", ARCHS)
def test_inherited_students_are_the_teachers_class_with_the_chosen_layers(arch):
    teacher = SentenceEncoder(tiny(arch, layers=4))
    st = build_student(teacher, EncoderStudentConfig(num_layers=2, init="teacher", layers=[0, 3], dropout=0.0), 0)
    assert type(st.backbone) is type(teacher.backbone) and st.num_layers == 2
    stack = EXPECTED[arch][0]
    t_sd, s_sd = teacher.backbone.state_dict(), st.backbone.state_dict()
    for name, v in s_sd.items():
        src = name
        for j, i in ((0, 0), (1, 3)):
            if name.startswith(f"{stack}.{j}."):
                src = f"{stack}.{i}." + name[len(f"{stack}.{j}."):]
        assert torch.equal(v, t_sd[src]), name
    # all teacher layers inherited in order: the very same function
    full = build_student(teacher, EncoderStudentConfig(num_layers=4, init="teacher", dropout=0.0), 0).eval()
    b = batch(4)
    with torch.no_grad():
        assert torch.allclose(full(**b)["embedding"], teacher(**b)["embedding"], atol=1e-5)
    narrow = build_student(teacher, EncoderStudentConfig(num_layers=2, hidden_size=16, num_heads=2), 0)
    assert type(narrow.backbone) is type(teacher.backbone) and narrow.config.hidden_size == 16


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["attention_kd", "minilm_relations", "hidden_mse", "mi_alpha"])
def test_layer_methods_train_on_each_architecture(arch, name):
    teacher = Teacher(SentenceEncoder(tiny(arch, layers=4, seed=1)))
    student = build_student(teacher.module, EncoderStudentConfig(num_layers=2, hidden_size=16, num_heads=2,
                                                                 dropout=0.0), 0)
    m = methods.get(name, "encoder").builder(student, teacher)
    terms = m(batch(8))
    loss = sum(m.weights.get(k, 1.0) * v for k, v in terms.items())
    assert torch.isfinite(loss)
    loss.backward()
    q = dict(student.named_modules())[student.layer_module(0, "query")]
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0


def test_fused_attention_is_refused_naming_the_class():
    from transformers import AutoModel, ModernBertConfig

    cfg = ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                           eos_token_id=3, cls_token_id=2, sep_token_id=3)
    enc = SentenceEncoder(AutoModel.from_config(cfg))
    assert enc.layers.stack == "layers" and enc.layer_module(1, "layer") == "backbone.layers.1"
    with pytest.raises(ConfigError, match=r"teacher\.path: ModernBertModel has no separate query/key/value"):
        enc.layer_module(0, "query")
    with pytest.raises(ConfigError, match="ModernBertModel"):
        methods.get("attention_kd", "encoder").builder(SentenceEncoder(tiny("bert", layers=2)), Teacher(enc))(batch(2))
    enc.check_layers(attention=False)  # hidden-state methods still find its layers
