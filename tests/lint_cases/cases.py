"""The lint case set: one notebook per pattern users write, with the findings it must get.

Written for nbprod from patterns seen in public notebooks (papermill's and Ploomber's examples,
the Python Data Science Handbook, handson-ml3, Evidently and Kedro examples, Vertex AI and Kaggle
notebooks); nothing is copied from them. Each case is a true positive, a false-positive trap
(``expect`` empty or partial), or both. With the default parameters cell, cell 0 holds
``data_path``, ``output_dir`` and ``seed``; the case's cells follow from cell 1.
"""

from __future__ import annotations

from lint_cases.notebooks import Case, Code, Markdown

R_KERNEL = {"name": "ir", "display_name": "R", "language": "R"}
JULIA_KERNEL = {"name": "julia-1.10", "display_name": "Julia 1.10", "language": "julia"}

LOAD = "import pandas as pd\nrows = pd.read_csv(data_path)"
TRAIN_TAIL = (
    "from pathlib import Path\nimport joblib\n"
    "Path(output_dir).mkdir(parents=True, exist_ok=True)\n"
    'joblib.dump(model, Path(output_dir) / "model.joblib")'
)

PARAMETERS = [
    Case(
        "clean_training_notebook",
        "papermill/README style: inputs first, then load, split, fit and write to output_dir",
        [
            Markdown("# Train"),
            LOAD,
            "from sklearn.model_selection import train_test_split\n"
            "from sklearn.ensemble import RandomForestClassifier\n"
            "train, holdout = train_test_split(rows, test_size=0.25, random_state=seed)\n"
            "model = RandomForestClassifier(n_estimators=50, random_state=seed)\n"
            'model.fit(train.drop(columns="y"), train["y"])',
            TRAIN_TAIL,
        ],
    ),
    Case(
        "parameters_cell_with_imports",
        "papermill accepts imports in the parameters cell (common in report notebooks)",
        ["print(Path(output_dir), os.sep, when)"],
        params="import os\nfrom pathlib import Path\n"
        'output_dir = "out"\nwhen: str = "2024-01-01"  # a date\nlimits = {"rows": [1, 2]}',
    ),
    Case(
        "parameters_not_literal",
        "a parameters cell that computes its defaults",
        ["print(output_dir, today)"],
        params="from pathlib import Path\nimport datetime\n"
        'output_dir = str(Path("out"))\ntoday = datetime.date.today()',
        expect=["parameters-not-literal error 0"],
    ),
    Case(
        "tags_written_as_a_string",
        'a notebook edited by a tool that stored "tags": "parameters" (papermill finds it)',
        [Code('output_dir = "out"\nseed = 3', tags="parameters"), "print(output_dir, seed)"],
        params=None,
        expect=["parameters-tags-not-list warning 0"],
    ),
    Case(
        "parameters_missing_with_candidate",
        "imports first, then a cell of defaults nobody tagged",
        ["import pandas as pd", 'data_path = "rows.csv"\noutput_dir = "out"', LOAD],
        params=None,
        expect=["parameters-missing error -"],
    ),
    Case(
        "parameters_missing_defaults_far_down",
        "a long exploratory notebook whose only all-assignment cell comes after the work",
        [
            'import pandas as pd\nrows = pd.read_csv("rows.csv")',
            "summary = rows.describe()",
            'output_dir = "out"\nthreshold = 0.5',
            "print(summary, output_dir, threshold)",
        ],
        params=None,
        expect=["parameters-missing error -"],
    ),
    Case(
        "ploomber_upstream_product",
        "Ploomber's parameters cell: upstream and product, no output_dir",
        ["print(upstream, product)"],
        params="upstream = None\nproduct = None",
        expect=["output-dir-missing error 0"],
    ),
    Case(
        "code_before_parameters",
        "a setup cell that already does work above the tagged cell",
        [
            Code('import pandas as pd\nraw = pd.read_csv("rows.csv")'),
            Code('output_dir = "out"\nseed = 1', tags=["parameters"]),
            "print(raw.shape, output_dir, seed)",
        ],
        params=None,
        expect=["parameters-not-first warning 0"],
    ),
    Case(
        "two_parameters_cells",
        "a notebook assembled from two others, each with its tagged cell",
        [Code("rate = 0.1", tags=["parameters"]), "print(output_dir, seed, rate)"],
        expect=["parameters-multiple warning 1"],
    ),
    Case(
        "papermill_executed_copy",
        "papermill's output notebook: an injected-parameters cell after the tagged one",
        [Code('output_dir = "runs/2"\nseed = 2', tags=["injected-parameters"]), LOAD],
    ),
]

KERNELS = [
    Case(
        "r_kernel",
        "an IRkernel notebook (R), as in papermill's R examples",
        ['library(dplyr)\ndf <- read.csv("/home/ana/data.csv")', "df %>% summarise(n = n())"],
        params="output_dir <- 'out'",
        kernel=R_KERNEL,
        language_info={"name": "R"},
        skipped=True,
    ),
    Case(
        "julia_kernel",
        "a Julia notebook",
        ['using CSV\ndf = CSV.read("/data/x.csv", DataFrame)'],
        params=None,
        kernel=JULIA_KERNEL,
        skipped=True,
    ),
    Case(
        "kernel_metadata_missing",
        "a notebook generated by a script without kernel metadata",
        [LOAD],
        kernel=None,
        expect=["kernel-metadata-missing error -"],
    ),
    Case(
        "colab_metadata",
        "Colab's metadata: a kernelspec without language, language_info naming python",
        [LOAD],
        kernel={"name": "python3", "display_name": "Python 3"},
        language_info={"name": "python"},
    ),
]

HIDDEN_STATE = [
    Case(
        "used_before_a_later_cell",
        "a cell moved up after the notebook was run",
        ["features = rows.drop(columns='y')", LOAD],
        expect=["used-before-defined error 1"],
    ),
    Case(
        "leftover_name",
        "a name from a deleted cell that still lives in the author's kernel",
        [LOAD, "model = make_model(rows)"],
        expect=["undefined-name error 2"],
    ),
    Case(
        "used_after_del",
        "memory cleanup with del, then a later cell still reading the frame",
        [LOAD, "del rows", "print(rows.shape)"],
        expect=["used-before-defined error 3"],
    ),
    Case(
        "syntax_error_keeps_other_checks",
        "a half-edited cell, and a leftover name elsewhere",
        [LOAD, "def clean(frame:\n    return frame", "clean(rows)\nprint(stale_total)"],
        expect=["syntax error 2", "undefined-name error 3"],
    ),
    Case(
        "ipython_names_and_timing_magics",
        "handbook-style timing and IPython's own names (In, Out, _, _i3, display)",
        [
            "%time total = sum(range(10))\nprint(total)",
            "%%capture captured\nprint('noisy')",
            "captured.show()\n%timeit -n1 -r1 sum(range(3))",
            "%%time\nsquares = [i * i for i in range(5)]",
            "display(squares)\nprint(In[1], Out, _, _i3, _3, __name__)",
        ],
    ),
    Case(
        "star_import",
        "from pylab import * style",
        ["from math import *\nprint(sqrt(2), pi)"],
        expect=["star-import warning 1"],
    ),
    Case(
        "function_uses_a_later_helper",
        "helpers defined in any order, called at the end",
        [
            "def report(frame):\n    return summarise(frame)",
            "def summarise(frame):\n    return frame.describe()",
            LOAD + "\nreport(rows)",
        ],
    ),
    Case(
        "out_of_order_execution",
        "saved outputs from a session that re-ran an earlier cell",
        [Code(LOAD, count=5), Code("print(rows.shape)", count=3)],
        expect=["execution-order warning 2"],
    ),
    Case(
        "colab_zero_execution_counts",
        "Colab saves 0 as the count of cells not run in the session",
        [Code("a = 10", count=0), Code("print(a)", count=2), Code("import time", count=0)],
    ),
    Case(
        "return_outside_function",
        "code pasted from a function body into a cell",
        [LOAD, "if rows.empty:\n    return None"],
        expect=["syntax error 2"],
    ),
]

PATHS = [
    Case(
        "tensorflow_device_strings",
        "handson-ml / TF tutorials pinning ops to a device",
        [
            'import tensorflow as tf\nwith tf.device("/cpu:0"):\n    a = tf.constant([1.0])',
            'with tf.device("/job:localhost/replica:0/task:0/device:GPU:0"):\n    b = a * 2',
        ],
    ),
    Case(
        "gcs_fuse_string_edits",
        "Vertex AI notebooks translating gs:// URIs to the /gcs/ mount",
        [
            'bucket_uri = "gs://bucket/models"\n'
            'local = bucket_uri.replace("gs://", "/gcs/")\n'
            'mounted = local.startswith("/gcs/")\nprint(local, mounted)',
        ],
    ),
    Case(
        "web_routes",
        "a notebook prototyping a Flask/FastAPI service",
        [
            "from flask import Flask\napp = Flask(__name__)\n\n"
            '@app.route("/predict", methods=["POST"])\ndef predict():\n    return "ok"',
            'from fastapi import FastAPI\napi = FastAPI()\n\n@api.get("/items/{item_id}")\n'
            "def item(item_id: int):\n    return item_id",
            'paths = {"/health": "ok"}\nif "/metrics" in paths:\n    print(paths["/health"])',
        ],
    ),
    Case(
        "regexes_and_separators",
        "cleaning text columns with regexes and splitting paths",
        [
            'import re\nids = re.findall(r"/(\\d+)/", "a/12/b")\n'
            'clean = re.sub("/+", "/", "a//b")\nparts = "x/y".split("/")\n'
            'joined = "/".join(parts)\nprint(ids, clean, joined)',
        ],
    ),
    Case(
        "home_folder_literal",
        "a path copied from the author's file browser",
        [
            'import pandas as pd\nrows = pd.read_csv("/home/ana/projects/churn/rows.csv")',
            'source = "/Users/ana/Downloads/extra.parquet"\nprint(source)',
        ],
        expect=["absolute-path error 1", "absolute-path error 2"],
    ),
    Case(
        "path_home",
        "pathlib code that builds the data folder from the home directory",
        ['from pathlib import Path\nDATA = Path.home() / "datasets" / "rows.csv"\nprint(DATA)'],
        expect=["absolute-path error 1"],
    ),
    Case(
        "join_from_root",
        "os.path.join starting at the file-system root",
        ['import os\nfolder = os.path.join("/", "mnt", "shared")\nprint(folder)'],
        expect=["absolute-path error 1"],
    ),
    Case(
        "windows_and_tilde",
        "paths from a Windows laptop and a home-relative path",
        [
            'import pandas as pd\nleft = pd.read_excel("C:\\\\Users\\\\bob\\\\sales.xlsx")',
            'right = pd.read_csv("~/data/sales.csv")\nprint(left, right)',
        ],
        expect=["absolute-path error 1", "absolute-path error 2"],
    ),
    Case(
        "kaggle_and_colab_roots",
        "Kaggle's /kaggle/input and Colab's mounted Drive",
        [
            'import pandas as pd\ntrain = pd.read_csv("/kaggle/input/titanic/train.csv")',
            'extra = pd.read_csv("/content/drive/MyDrive/extra.csv")\nprint(train, extra)',
        ],
        expect=["absolute-path error 1", "absolute-path error 2"],
    ),
    Case(
        "output_suffixes",
        "files written under output_dir by string building",
        [
            "import os, json\n"
            'with open(output_dir + "/metrics.json", "w") as fh:\n    json.dump({}, fh)\n'
            'report = f"{output_dir}/report.html"\n'
            'table = os.path.join(output_dir, "table.csv")\nprint(report, table)',
        ],
    ),
    Case(
        "absolute_path_inside_project",
        "an absolute path into the project's own data folder",
        ['import pandas as pd\nrows = pd.read_csv("{project}/data/rows.csv")'],
        expect=["absolute-path-in-project warning 1"],
    ),
    Case(
        "container_mount_and_route_prefix",
        "a /data volume named as a folder, next to an API prefix string",
        ['DATA_DIR = "/data"\nAPI_PREFIX = "/v1"\nprint(DATA_DIR, API_PREFIX)'],
        expect=["absolute-path error 1"],
    ),
    Case(
        "home_from_environment",
        "the home folder read from $HOME",
        ['import os\nconfig = os.path.join(os.environ["HOME"], ".config", "x.yaml")'],
        expect=["absolute-path error 1"],
    ),
    Case(
        "sys_path_append",
        "importing helpers from a folder on the author's machine",
        ['import sys\nsys.path.append("/home/ana/libs")'],
        expect=["absolute-path error 1"],
    ),
]

SHELL = [
    Case(
        "pip_installs",
        "installs at the top of tutorial notebooks",
        ["%pip install xgboost", "!pip install -q seaborn==0.13"],
        expect=["pip-install error 1", "pip-install error 2"],
    ),
    Case(
        "downloads_through_the_shell",
        "data fetched with wget or curl from Python",
        [
            'import os\nos.system("wget -q https://example.org/rows.csv -O rows.csv")',
            'import subprocess\nsubprocess.run(["curl", "-sSLO", "https://example.org/x.zip"])',
            "!wget -q https://example.org/y.csv",
        ],
        expect=["network-read error 1", "network-read error 2", "network-read error 3"],
    ),
    Case(
        "shell_commands",
        "listing and cleaning folders from the notebook",
        ["!ls -la data/", 'import os\nos.system("rm -rf scratch")', "%%bash\nhead -3 rows.csv"],
        expect=["shell-command error 1", "shell-command error 2", "shell-command error 3"],
    ),
    Case(
        "harmless_magics",
        "display and reload magics at the top of most notebooks",
        [
            "%matplotlib inline\n%load_ext autoreload\n%autoreload 2\n"
            "%config InlineBackend.figure_format = 'retina'",
            "%%time\nvalue = sum(range(100))",
            "print(value)",
        ],
    ),
    Case(
        "state_changing_magics",
        "changing folder and environment from the notebook",
        ["%cd ..", "%env MODE=fast"],
        expect=["magic warning 1", "magic warning 2"],
    ),
]

NETWORK = [
    Case(
        "keras_dataset_download",
        "handson-ml / Keras tutorials loading MNIST",
        [
            "from tensorflow import keras\n"
            "(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()",
        ],
        expect=["network-read error 1"],
    ),
    Case(
        "keras_get_file",
        "TF tutorials downloading a zip with get_file",
        [
            "import tensorflow as tf\n"
            'archive = tf.keras.utils.get_file("flowers.tgz", origin="https://example.org/f.tgz")',
        ],
        expect=["network-read error 1"],
    ),
    Case(
        "google_cloud_storage_client",
        "reading a blob with the google-cloud-storage client",
        [
            "from google.cloud import storage\nclient = storage.Client()\n"
            'blob = client.bucket("my-bucket").blob("rows.csv")\n'
            'blob.download_to_filename("rows.csv")',
        ],
        expect=["network-read error 1"],
    ),
    Case(
        "url_reads",
        "handson-ml's download helper and a pandas read of a URL",
        [
            "import urllib.request\n\ndef fetch(path):\n"
            '    urllib.request.urlretrieve("https://example.org/housing.tgz", path)',
            'import pandas as pd\nURL = "https://example.org/rows.csv"\nrows = pd.read_csv(URL)',
        ],
        expect=["network-read error 1", "network-read error 2"],
    ),
    Case(
        "urls_in_text_only",
        "links in prints, parsing and markdown: nothing is downloaded",
        [
            Markdown("Data from [the portal](https://example.org/data)."),
            'from urllib.parse import urlparse\nprint("docs: https://example.org")\n'
            'host = urlparse("https://example.org/x").netloc',
        ],
    ),
    Case(
        "sklearn_datasets",
        "fetch_openml downloads; load_iris is bundled",
        [
            "from sklearn.datasets import fetch_openml, load_iris\n"
            'mnist = fetch_openml("mnist_784", as_frame=False)',
            "iris = load_iris(as_frame=True)",
        ],
        expect=["network-read error 1"],
    ),
    Case(
        "seaborn_dataset",
        "the Python Data Science Handbook's seaborn datasets",
        ['import seaborn as sns\nplanets = sns.load_dataset("planets")'],
        expect=["network-read error 1"],
    ),
    Case(
        "boto3_read",
        "reading from S3 with boto3",
        ['import boto3\ns3 = boto3.client("s3")\ns3.download_file("b", "k.csv", "k.csv")'],
        expect=["network-read error 1"],
    ),
]

SK = "from sklearn.{module} import {name}\n"
RANDOMNESS = [
    Case(
        "logistic_regression_default_solver",
        "the README's own example: lbfgs does not use random_state",
        [
            SK.format(module="linear_model", name="LogisticRegression")
            + "model = LogisticRegression()"
        ],
    ),
    Case(
        "logistic_regression_saga",
        "a saga solver for large sparse data: it shuffles",
        [
            SK.format(module="linear_model", name="LogisticRegression")
            + 'model = LogisticRegression(solver="saga", max_iter=500)'
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "ridge_solvers",
        "handson-ml's Ridge: the default solver is deterministic, sag is not",
        [
            SK.format(module="linear_model", name="Ridge") + "plain = Ridge(alpha=1.0)",
            'stochastic = Ridge(alpha=1.0, solver="sag")',
        ],
        expect=["random-unseeded error 2"],
    ),
    Case(
        "dummy_baselines",
        "Evidently-style baselines: the prior strategy is deterministic, stratified is not",
        [
            SK.format(module="dummy", name="DummyClassifier") + "baseline = DummyClassifier()",
            'noisy = DummyClassifier(strategy="stratified")',
        ],
        expect=["random-unseeded error 2"],
    ),
    Case(
        "svc_probability",
        "SVC is deterministic unless probability=True (Platt scaling's internal CV)",
        [
            SK.format(module="svm", name="SVC") + 'svm = SVC(kernel="rbf", C=10)',
            "calibrated = SVC(probability=True)",
        ],
        expect=["random-unseeded error 2"],
    ),
    Case(
        "pca_on_small_data",
        "the handbook's PCA: the default solver on a small matrix is exact",
        [SK.format(module="decomposition", name="PCA") + "pca = PCA(n_components=2)"],
    ),
    Case(
        "random_forest",
        "an unseeded forest next to a seeded one",
        [
            SK.format(module="ensemble", name="RandomForestClassifier")
            + "forest = RandomForestClassifier(n_estimators=200)",
            "seeded = RandomForestClassifier(n_estimators=200, random_state=seed)",
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "decision_tree_ties",
        "handson-ml's decision trees: random_state breaks ties between equally good splits",
        [
            SK.format(module="tree", name="DecisionTreeClassifier")
            + "tree = DecisionTreeClassifier(max_depth=2)"
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "ensembles_seed_what_they_nest",
        "handson-ml's bagging and boosting of trees: the ensemble's seed covers its trees",
        [
            "from sklearn.ensemble import AdaBoostClassifier, BaggingClassifier\n"
            "from sklearn.tree import DecisionTreeClassifier\n"
            "bag = BaggingClassifier(DecisionTreeClassifier(), n_estimators=20, "
            "random_state=seed)\n"
            "boost = AdaBoostClassifier(DecisionTreeClassifier(max_depth=1), random_state=seed)",
        ],
    ),
    Case(
        "voting_does_not_seed",
        "a voting ensemble (no seed of its own) of an unseeded forest and a linear model",
        [
            "from sklearn.ensemble import RandomForestClassifier, VotingClassifier\n"
            "from sklearn.linear_model import LogisticRegression\n"
            "vote = VotingClassifier([\n"
            '    ("rf", RandomForestClassifier()),\n    ("lr", LogisticRegression()),\n])',
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "train_test_split",
        "an unseeded split, and a time-ordered one without shuffling",
        [
            LOAD + "\nfrom sklearn.model_selection import train_test_split\n"
            "train, test = train_test_split(rows, test_size=0.2)",
            "past, recent = train_test_split(rows, test_size=0.2, shuffle=False)",
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "cross_validation_splitters",
        "KFold without shuffling is deterministic; shuffling needs a seed",
        [
            "from sklearn.model_selection import KFold, StratifiedKFold\nplain = KFold(5)",
            "shuffled = KFold(5, shuffle=True)",
            "seeded = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)",
        ],
        expect=["random-unseeded error 2"],
    ),
    Case(
        "numpy_global_draws",
        "np.random.rand for synthetic data with no seed",
        ["import numpy as np\nnoise = np.random.rand(100)"],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "numpy_global_seed_then_sklearn",
        "np.random.seed at the top, scikit-learn left to the global state",
        [
            "import numpy as np\nnp.random.seed(seed)\nnoise = np.random.normal(size=10)",
            SK.format(module="cluster", name="KMeans") + "clusters = KMeans(n_clusters=3)",
        ],
        expect=["random-unseeded warning 2"],
    ),
    Case(
        "dataframe_sample",
        "subsampling rows for a quick experiment",
        [
            LOAD + "\nsmall = rows.sample(frac=0.1)",
            "same = rows.sample(frac=0.1, random_state=seed)",
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "torch_without_manual_seed",
        "a PyTorch notebook drawing tensors and building layers without a seed",
        [
            "import torch\nfrom torch import nn\nweights = torch.randn(4, 2)\n"
            "layer = nn.Linear(4, 2)",
            "from torch.utils.data import DataLoader\n"
            "loader = DataLoader(list(range(10)), batch_size=2, shuffle=True)",
        ],
        expect=["random-unseeded error 1", "random-unseeded error 2"],
    ),
    Case(
        "torch_with_manual_seed",
        "the same notebook seeding torch first",
        [
            "import torch\nfrom torch import nn\ntorch.manual_seed(seed)\n"
            "weights = torch.randn(4, 2)\nlayer = nn.Linear(4, 2)\n"
            "loader = torch.utils.data.DataLoader([1, 2], shuffle=True)\n"
            "fixed = torch.zeros(3)",
        ],
    ),
    Case(
        "keras_with_and_without_seed",
        "handson-ml's Keras models: tf.random.set_seed before building layers",
        [
            "import tensorflow as tf\nnoise = tf.random.normal([3])",
            "tf.random.set_seed(seed)\nlayer = tf.keras.layers.Dense(10)",
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "hardcoded_seed_without_parameter",
        "random_state=42 everywhere and no seed parameter",
        [
            SK.format(module="ensemble", name="ExtraTreesRegressor")
            + "model = ExtraTreesRegressor(random_state=42)"
        ],
        params='output_dir = "out"',
        expect=["random-seed-hardcoded warning 1"],
    ),
    Case(
        "hist_gradient_boosting_unseeded",
        "HistGradientBoosting left unseeded: early stopping turns on above 10,000 rows",
        [
            SK.format(module="ensemble", name="HistGradientBoostingClassifier")
            + "model = HistGradientBoostingClassifier(max_iter=100)"
        ],
        expect=["random-unseeded warning 1"],
    ),
    Case(
        "pipeline_with_sgd",
        "a preprocessing pipeline ending in an unseeded SGD classifier",
        [
            "from sklearn.pipeline import make_pipeline\n"
            "from sklearn.preprocessing import StandardScaler\n"
            "from sklearn.linear_model import SGDClassifier\n"
            'clf = make_pipeline(StandardScaler(), SGDClassifier(loss="log_loss"))'
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "grid_search_of_seeded_forest",
        "GridSearchCV (no randomness of its own) around a seeded forest",
        [
            "from sklearn.ensemble import RandomForestClassifier\n"
            "from sklearn.model_selection import GridSearchCV\n"
            "grid = {'max_depth': [3, 5]}\n"
            "search = GridSearchCV(RandomForestClassifier(random_state=seed), grid, cv=5)"
        ],
    ),
    Case(
        "synthetic_data_generator",
        "make_classification without a seed for a demo dataset",
        [
            SK.format(module="datasets", name="make_classification")
            + "X, y = make_classification(n_samples=200, n_features=5)"
        ],
        expect=["random-unseeded error 1"],
    ),
    Case(
        "stdlib_random",
        "random.shuffle of a list of files",
        ["import random\nfiles = ['a', 'b', 'c']\nrandom.shuffle(files)"],
        expect=["random-unseeded error 1"],
    ),
]

SECRETS = [
    Case(
        "openai_key_in_code",
        "an LLM notebook with the key pasted in",
        ['import os\nos.environ["OPENAI_API_KEY"] = "sk-proj-Zx81kQ2mW9aLr5Tn3Vb7Yc4"'],
        expect=["hardcoded-secret error 1"],
    ),
    Case(
        "aws_access_key",
        "boto3 credentials written out",
        [
            'AWS_ACCESS_KEY_ID = "AKIAZ7QW3ERT5YUI8OPL"\n'
            'AWS_SECRET_ACCESS_KEY = "k9Qw/Ei2+rTy7Ui8Op0aSd3Fg5Hj6Kl1Zx4Cv7Bn"'
        ],
        expect=["hardcoded-secret error 1"],
    ),
    Case(
        "password_variable",
        "a database password next to one read from the environment",
        [
            'import os\ndb_password = "Tr0ub4dor&3xyz"',
            'db_password_env = os.environ["DB_PASSWORD"]\npassword = os.getenv("PW", "")',
        ],
        expect=["hardcoded-secret error 1"],
    ),
    Case(
        "tokenizer_settings",
        "NLP notebooks: special tokens and token patterns are not credentials",
        [
            'pad_token = "[PAD]"\neos_token = "</s>"\n'
            'token_pattern = r"(?u)\\b\\w\\w+\\b"\nmax_tokens = 512\n'
            'tokenizer_name = "bert-base-uncased"',
        ],
    ),
    Case(
        "connection_url_password",
        "a SQLAlchemy URL with the password inline, and one built from a variable",
        [
            'engine_url = "postgresql://analyst:S3cretPass99@db.internal:5432/sales"',
            'import os\npw = os.environ["PGPASSWORD"]\n'
            'safe_url = f"postgresql://analyst:{pw}@db.internal:5432/sales"',
        ],
        expect=["hardcoded-secret error 1"],
    ),
    Case(
        "secret_in_saved_output",
        "a cell that printed a token, saved with its output",
        [
            Code(
                'import os\nprint(os.environ["HF_TOKEN"])',
                outputs=[
                    {
                        "name": "stdout",
                        "output_type": "stream",
                        "text": ["hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n"],
                    }
                ],
            )
        ],
        expect=["hardcoded-secret error 1"],
    ),
    Case(
        "secret_as_pipeline_parameter",
        "the README's way: a parameter the pipeline fills from the environment",
        ["print(api_token is None)"],
        params='output_dir = "out"\napi_token = None\nendpoint_token = ""',
    ),
]

ROBUSTNESS = [
    Case(
        "lone_surrogate",
        "a notebook holding half of an emoji (a lone UTF-16 surrogate)",
        ['label = "broken \ud83d emoji"\nprint(label)'],
    ),
    Case(
        "odd_cells",
        "empty cells, a raw cell's neighbours, a cell of comments only",
        ["", "# just a comment", Markdown(""), "print(output_dir)"],
    ),
]

NOTEBOOK_STYLES = [
    Case(
        "handbook_style_eda",
        "the Python Data Science Handbook: seeded numpy, timing magics, a peek at the data",
        [
            "%matplotlib inline\nimport numpy as np\nimport pandas as pd",
            "np.random.seed(seed)\nx = np.random.randint(10, size=6)\n%timeit x.sum()",
            LOAD + "\nrows.describe()",
            "rows.sample(5)",
        ],
        expect=["random-unseeded warning 4"],
    ),
    Case(
        "handson_style_figures",
        "handson-ml's save_fig helper writing under a relative images folder",
        [
            "from pathlib import Path\nimport matplotlib.pyplot as plt\n"
            'IMAGES_PATH = Path() / "images" / "project"\n'
            "IMAGES_PATH.mkdir(parents=True, exist_ok=True)\n\n"
            'def save_fig(fig_id, extension="png"):\n'
            '    plt.savefig(IMAGES_PATH / f"{fig_id}.{extension}")',
            'save_fig("histograms")',
        ],
    ),
    Case(
        "evidently_style_report",
        "Evidently examples: an OpenML dataset and a report saved as HTML",
        [
            "from sklearn import datasets\n"
            'adult = datasets.fetch_openml(name="adult", version=2, as_frame="auto")',
            'report_path = output_dir + "/drift.html"\nprint(report_path)',
        ],
        expect=["network-read error 1"],
    ),
    Case(
        "kedro_extension",
        "Kedro's notebooks: the extension defines catalog, context and session",
        ["%load_ext kedro.ipython", 'companies = catalog.load("companies")\nprint(context)'],
        expect=["magic warning 1"],
    ),
    Case(
        "run_and_store_magics",
        "%run of a helper script and %store -r of a frame from another notebook",
        ["%run helpers.py", "cleaned = clean_frame(rows_from_script)", "%store -r shared"],
        expect=["magic warning 1", "magic warning 3"],
    ),
    Case(
        "config_with_machine_paths",
        "a config dict and an argparse default holding paths of the author's machine",
        [
            'config = {"train": "/mnt/share/train.csv", "name": "run-1"}',
            "import argparse\nparser = argparse.ArgumentParser()\n"
            'parser.add_argument("--data", default="/srv/data/rows.parquet")',
        ],
        expect=["absolute-path error 1", "absolute-path error 2"],
    ),
    Case(
        "glob_and_tmp",
        "globbing an absolute folder and writing scratch files to /tmp",
        [
            'import glob, os\nfiles = glob.glob("/data/raw/*.csv")',
            'os.makedirs("/tmp/run", exist_ok=True)',
        ],
        expect=["absolute-path error 1", "absolute-path error 2"],
    ),
    Case(
        "calling_a_served_model",
        "a notebook posting rows to a model server: a network call, not a path",
        [
            'import requests\nBASE = "http://localhost:3000"\n'
            'answer = requests.post(f"{BASE}/predict", json={"rows": []})',
        ],
        expect=["network-read error 1"],
    ),
    Case(
        "unsupervised_estimators",
        "clustering, embedding and anomaly detection left unseeded",
        [
            "from sklearn.cluster import KMeans\nfrom sklearn.ensemble import IsolationForest\n"
            "km = KMeans(n_clusters=3, n_init=10)",
            "iso = IsolationForest(contamination=0.1)",
            "from sklearn.linear_model import LinearRegression\nlinear = LinearRegression()",
        ],
        expect=["random-unseeded error 1", "random-unseeded error 2"],
    ),
    Case(
        "seed_helper_function",
        "a set_seed helper seeding every generator, called before the draws",
        [
            "import random\nimport numpy as np\nimport torch\n\n"
            "def set_seed(value):\n    random.seed(value)\n    np.random.seed(value)\n"
            "    torch.manual_seed(value)\n\nset_seed(seed)",
            "noise = np.random.rand(3)\nperm = torch.randperm(5)\nrandom.choice([1, 2])",
        ],
    ),
    Case(
        "placeholder_credentials",
        "tutorial placeholders and file references where a key would go",
        [
            'API_KEY = "YOUR_API_KEY_HERE"\nclient_secret = "client_secret.json"\n'
            'hf_token = "<paste your token>"\nslack_token = ""',
        ],
    ),
]

CASES: list[Case] = [
    *PARAMETERS,
    *KERNELS,
    *HIDDEN_STATE,
    *PATHS,
    *SHELL,
    *NETWORK,
    *RANDOMNESS,
    *SECRETS,
    *NOTEBOOK_STYLES,
    *ROBUSTNESS,
]
