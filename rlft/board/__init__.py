"""``rlft board``: a local web app over run directories (runs, curves, a per-token rollout
inspector, a launch form), and the plotting code it shares with ``rlft plot``.

:mod:`rlft.board.runs` reads run directories as they are written (no web code);
:mod:`rlft.board.plots` builds the plotly figures; :mod:`rlft.board.schema` turns the config
dataclasses into form fields; :mod:`rlft.board.launcher` starts and stops runs;
:mod:`rlft.board.app` is the Dash app. The web and plotting packages are the optional extra
``rlft[board]``, imported only by the last three.
"""
