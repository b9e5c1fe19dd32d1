"""What the dashboard pages share, by concern:

- `loaders`: the sidebar's session keys, and cached readers of datasets, runs, models and the
  files derived from them;
- `figures`: plotly figures and the tables behind them (no Streamlit: testable alone);
- `explain_panel`: the interactive parts: grids, pickers, scores with intervals, explanations;
- `formatting` (as `fmt`): how numbers are written, one function per kind.

Pages hold layout only and reach all of it through this namespace (``dashboard.X``,
``dashboard.fmt.Y``), so a helper can move between the modules without touching a page.
"""
from . import formatting as fmt
from .explain_panel import (EXPLANATION_CAPTIONS, PER_PAGE, evidence, explain_picker,
                            image_grid, interval_metric, method_choice, prediction_caption,
                            prediction_grid, recorded_probability, sequence_grid,
                            show_explanation, show_verdict, truth_badge)
from .figures import (GROUP_NAMES, GROUP_VALUES, SPLIT_ORDER, cell_predictions, clicked_cell,
                      comparison_summary, confident_wrong, confusion_table, empty_cell_message,
                      fig_city_differences, fig_confusion, fig_difference, fig_group_accuracy,
                      fig_history, fig_mixing, fig_parcoords, fig_per_city, fig_reliability,
                      fig_runners_up, fig_speed_accuracy, fig_split_counts, filter_images,
                      group_accuracy, history_long, leaderboard_intervals,
                      least_confident_right, per_city_table, sequence_frames, sequence_groups,
                      studies, study_table, within)
from .loaders import (COMPARE_RUN_ID, DATASET_ROOT, NO_SPLIT, RETURN_TO, RUN_ID, THUMBNAIL_PX,
                      admit_photo, chosen_dataset, chosen_run, comparison, dataset_choices,
                      duplicate_pairs, embedding_map_table, folder_stamp, gate, interval_columns, keras_model,
                      load_dataset, manifest_with_scenes, manifest_with_split, model_or_stop,
                      no_runs_message, outlier_reconstructions, predictions, predictor, publish,
                      read_quality, require_sidebar, run_labels, run_manifest, runs_table,
                      split_images, thumbnail, verdict)

__all__ = [name for name in dir() if not name.startswith("_")]
