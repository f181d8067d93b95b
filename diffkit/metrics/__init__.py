"""Evaluation metrics: FID / IS / KID / precision-recall and domain-classifier distances.

* :mod:`.inception` - the FID InceptionV3 (pytorch-fid port of the TF 2015-12-05 graph) and
  its weight loading (explicit path, ``$DIFFKIT_INCEPTION_WEIGHTS`` or ``~/.cache/diffkit``).
* :mod:`.frechet` - Frechet distance between Gaussians and feature statistics.
* :mod:`.scores` - Inception Score, KID, improved precision/recall.
* :mod:`.features` - batched extraction from tensors, batch iterables and PNG folders;
  cached reference statistics.
* :mod:`.fid` - FID and IS of image sets in one pass.
* :mod:`.evaluator` - a small CNN trained in seconds for data far from ImageNet (MNIST...).
* :mod:`.ts2vec` - the TS2Vec time-series encoder and its hierarchical contrastive loss.
* :mod:`.context_fid` - Context-FID: Frechet distance of TS2Vec embeddings (time series).
* :mod:`.correlational` - the correlational score: l1 distance of cross-correlations (time series).
* :mod:`.posthoc_rnn` - TimeGAN's discriminative and predictive scores (post-hoc GRUs, time series).
"""
from .context_fid import (context_fid, context_fid_statistics,
                          train_context_fid_encoder)
from .correlational import correlational_score, cross_correlations
from .evaluator import (EvaluatorConfig, EvaluatorNet, classifier_frechet_distance,
                        classifier_score, evaluator_accuracy, evaluator_provenance, load_evaluator,
                        save_evaluator, train_evaluator)
from .features import cached_reference_statistics, extract_features, fingerprint_files
from .fid import InceptionMetrics, fid, inception_metrics
from .frechet import (MIN_SAMPLES, GaussianStats, feature_statistics, frechet_distance,
                      frechet_distance_of_features, frechet_distance_of_stats)
from .inception import (FIDInceptionV3, InceptionOutput, download_inception_weights,
                        find_inception_weights, load_inception, read_manifest)
from .posthoc_rnn import discriminative_score, predictive_score
from .scores import (MeanStd, PrecisionRecall, inception_score, kernel_inception_distance,
                     precision_recall)
from .ts2vec import (TS2VecConfig, TS2VecEncoder, hierarchical_contrastive_loss, train_ts2vec,
                     ts2vec_embeddings)

__all__ = [
    "EvaluatorConfig", "EvaluatorNet", "FIDInceptionV3", "GaussianStats", "InceptionMetrics",
    "InceptionOutput", "MIN_SAMPLES", "MeanStd", "PrecisionRecall", "cached_reference_statistics",
    "classifier_frechet_distance", "classifier_score", "download_inception_weights",
    "evaluator_accuracy", "evaluator_provenance", "extract_features", "feature_statistics", "fid",
    "find_inception_weights",
    "fingerprint_files", "frechet_distance", "frechet_distance_of_features",
    "frechet_distance_of_stats", "inception_metrics", "inception_score",
    "kernel_inception_distance", "load_evaluator", "load_inception", "precision_recall",
    "read_manifest", "save_evaluator", "train_evaluator",
    "TS2VecConfig", "TS2VecEncoder", "context_fid", "context_fid_statistics", "hierarchical_contrastive_loss",
    "train_context_fid_encoder", "train_ts2vec", "ts2vec_embeddings",
    "correlational_score", "cross_correlations", "discriminative_score", "predictive_score",
]
