"""recstack monitoring dashboard: `make dashboard` (or `streamlit run monitoring/app.py`).

Reads the `monitor` stage's summary from $RECSTACK_MONITORING_DIR (default: this folder). Each page is a
file under views/; the data loading and every verdict live in `recstack.monitoring` (tested there).
"""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="recstack monitoring", page_icon=":material/monitoring:", layout="wide")
pages = [
    st.Page(HERE / "views" / "overview.py", title="Overview", icon=":material/home:", default=True),
    st.Page(HERE / "views" / "quality.py", title="Quality", icon=":material/target:", url_path="quality"),
    st.Page(HERE / "views" / "drift.py", title="Drift", icon=":material/waves:", url_path="drift"),
    st.Page(
        HERE / "views" / "experiments.py",
        title="Experiments",
        icon=":material/science:",
        url_path="experiments",
    ),
    st.Page(
        HERE / "views" / "catalog.py", title="Catalog", icon=":material/library_books:", url_path="catalog"
    ),
]
st.navigation(pages).run()
