"""The bundled synthetic online-education data set (courses, learners, behaviour events).

Pure Python + numpy, no I/O apart from :func:`write_jsonl`, and no clock: the same ``seed``
and ``end`` always give byte-identical output.

How the behaviour is generated (so that the data is learnable, but not trivially):

* The catalog has a dozen subjects, each split into stages ("Python基础", "pandas", ...).
  Stages are chained into learning tracks (prerequisite chains such as
  Python基础 → pandas → 机器学习基础 → 深度学习, HTML与CSS → JavaScript → React); every course
  has a fixed "sequel" in the next stage of each track (preferably by the same teacher), so the
  next course a learner takes is partly predictable from the previous one.
* Popularity follows a power law inside each subject.
* Each learner has 1–3 subject interests, a level, a language preference and a price
  sensitivity. Each "engagement" with a course is either the next step of a track, browsing
  inside an interest, or exploring the globally popular courses.
* An engagement expands into a funnel of events (click/search_click → view → favorite /
  add_to_cart → purchase → enroll → complete → rate, or a dislike), with realistic ratios and
  timestamps; events after the reference ``end`` (e.g. not-yet-finished courses) are dropped.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_END",
    "EVENT_TYPES",
    "DemoData",
    "generate",
    "write_jsonl",
]

DEFAULT_END = datetime(2026, 11, 1, tzinfo=UTC)
WINDOW_DAYS = 180

EVENT_TYPES: tuple[str, ...] = (
    "view",
    "click",
    "search_click",
    "favorite",
    "add_to_cart",
    "purchase",
    "enroll",
    "complete",
    "rate",
    "dislike",
)
_T = {name: code for code, name in enumerate(EVENT_TYPES)}

LEVELS = ("beginner", "intermediate", "advanced")
_LEVEL_ZH = ("入门", "进阶", "高级")
_B, _I, _A = 0, 1, 2


@dataclass(frozen=True)
class _Stage:
    key: str
    subject: str
    name: str  # sub-category
    level: int
    tags: tuple[str, ...]
    titles_zh: tuple[str, ...]
    titles_en: tuple[str, ...]
    about_zh: str
    about_en: str


# subject -> relative traffic
SUBJECTS: dict[str, float] = {
    "Python编程": 1.6,
    "数据分析": 1.4,
    "机器学习": 1.1,
    "Web前端": 1.2,
    "Java后端": 1.1,
    "数据库": 0.8,
    "产品经理": 0.8,
    "UI设计": 0.8,
    "英语": 1.5,
    "日语": 0.7,
    "考研数学": 0.8,
    "摄影": 0.7,
    "财务会计": 0.9,
    "职场技能": 0.9,
}

_STAGES: tuple[_Stage, ...] = (
    # Python编程
    _Stage(
        "py_basic",
        "Python编程",
        "Python基础",
        _B,
        ("Python", "编程入门", "语法"),
        (
            "Python零基础入门",
            "Python编程从入门到实践",
            "Python基础语法精讲",
            "小白也能学会的Python",
            "Python入门：30天掌握核心语法",
        ),
        (
            "Python for Absolute Beginners",
            "Python Programming Fundamentals",
            "Learn Python in 30 Days",
        ),
        "从变量、循环到函数和面向对象，系统掌握Python基础语法",
        "Covers variables, loops, functions and object-oriented programming in Python",
    ),
    _Stage(
        "py_adv",
        "Python编程",
        "Python进阶",
        _I,
        ("Python", "装饰器", "并发"),
        ("Python进阶：装饰器、生成器与并发", "Python高级编程技巧", "流畅的Python实战"),
        (
            "Advanced Python: Generators, Decorators and Concurrency",
            "Intermediate Python Programming",
        ),
        "深入理解装饰器、生成器、异步与多进程，写出地道的Python代码",
        "Go beyond the basics with generators, decorators, asyncio and multiprocessing",
    ),
    _Stage(
        "py_crawler",
        "Python编程",
        "爬虫",
        _I,
        ("爬虫", "requests", "Scrapy"),
        ("Python爬虫实战：requests与Scrapy", "网络爬虫从入门到精通", "Python爬虫与数据采集"),
        ("Web Scraping with Python and Scrapy",),
        "使用requests、BeautifulSoup和Scrapy采集网页数据并应对反爬",
        "Collect web data with requests, BeautifulSoup and Scrapy",
    ),
    _Stage(
        "py_web",
        "Python编程",
        "Django/Flask",
        _I,
        ("Django", "Flask", "Web开发"),
        ("Django企业级Web开发实战", "Flask轻量级Web开发", "Python Web全栈开发"),
        ("Building Web Apps with Django", "Flask Web Development"),
        "用Django和Flask从零搭建并部署一个完整的Web应用",
        "Build and deploy complete web applications with Django and Flask",
    ),
    _Stage(
        "py_auto",
        "Python编程",
        "办公自动化",
        _B,
        ("自动化", "Excel", "办公"),
        ("Python办公自动化：Excel/Word/PDF一网打尽", "用Python解放双手：自动化办公"),
        ("Automating Office Work with Python",),
        "用Python批量处理Excel、Word和PDF，告别重复劳动",
        "Automate spreadsheets, documents and PDFs with Python",
    ),
    # 数据分析
    _Stage(
        "da_excel",
        "数据分析",
        "Excel数据分析",
        _B,
        ("Excel", "数据透视表", "函数"),
        ("Excel数据分析从入门到精通", "Excel函数与数据透视表实战", "职场Excel高效数据处理"),
        ("Excel for Data Analysis",),
        "掌握常用函数、数据透视表和图表，用Excel完成业务分析",
        "Functions, pivot tables and charts for everyday business analysis",
    ),
    _Stage(
        "da_sql",
        "数据分析",
        "SQL数据分析",
        _B,
        ("SQL", "数据查询", "业务分析"),
        ("SQL数据分析实战", "用SQL做业务分析", "SQL取数与报表"),
        ("SQL for Data Analysts",),
        "从SELECT到窗口函数，用SQL回答业务问题",
        "From SELECT to window functions: answer business questions with SQL",
    ),
    _Stage(
        "da_pandas",
        "数据分析",
        "pandas",
        _I,
        ("pandas", "NumPy", "数据清洗"),
        ("Python数据分析实战：pandas入门", "pandas数据处理与清洗", "NumPy与pandas数据分析"),
        ("Data Analysis with pandas", "Python for Data Analysis"),
        "用NumPy和pandas完成数据清洗、分组聚合与时间序列分析",
        "Clean, reshape, aggregate and analyse data with NumPy and pandas",
    ),
    _Stage(
        "da_viz",
        "数据分析",
        "数据可视化",
        _I,
        ("可视化", "Matplotlib", "Tableau"),
        ("数据可视化：Matplotlib与Seaborn", "Tableau商业数据可视化", "数据可视化与故事表达"),
        ("Data Visualization with Python",),
        "用图表讲好数据故事，掌握Matplotlib、Seaborn与Tableau",
        "Tell stories with data using Matplotlib, Seaborn and Tableau",
    ),
    _Stage(
        "da_bi",
        "数据分析",
        "商业智能",
        _A,
        ("Power BI", "商业智能", "指标体系"),
        ("Power BI商业智能分析", "数据驱动的商业分析", "搭建企业指标体系"),
        ("Business Analytics with Power BI",),
        "搭建指标体系与BI看板，支撑业务决策",
        "Build KPI systems and dashboards that drive business decisions",
    ),
    # 机器学习
    _Stage(
        "ml_math",
        "机器学习",
        "数学基础",
        _I,
        ("线性代数", "概率", "微积分"),
        ("机器学习的数学基础", "人工智能数学入门"),
        ("Mathematics for Machine Learning",),
        "补齐线性代数、概率统计和微积分，为机器学习打基础",
        "Linear algebra, probability and calculus for machine learning",
    ),
    _Stage(
        "ml_intro",
        "机器学习",
        "机器学习基础",
        _I,
        ("机器学习", "scikit-learn", "算法"),
        ("机器学习入门：scikit-learn实战", "机器学习算法原理与实践", "零基础入门机器学习"),
        ("Machine Learning with scikit-learn", "Introduction to Machine Learning"),
        "从线性回归到随机森林，用scikit-learn完成完整的建模流程",
        "From linear regression to random forests: the full modelling workflow with scikit-learn",
    ),
    _Stage(
        "ml_dl",
        "机器学习",
        "深度学习",
        _A,
        ("深度学习", "PyTorch", "神经网络"),
        ("深度学习实战：PyTorch从入门到精通", "神经网络与深度学习"),
        ("Deep Learning with PyTorch", "Neural Networks from Scratch"),
        "理解神经网络原理并用PyTorch训练图像与序列模型",
        "Understand neural networks and train models with PyTorch",
    ),
    _Stage(
        "ml_nlp",
        "机器学习",
        "自然语言处理",
        _A,
        ("NLP", "Transformer", "大模型"),
        ("自然语言处理与Transformer", "大模型应用开发实战", "从零构建中文文本分类"),
        ("NLP with Transformers", "Building LLM Applications"),
        "掌握Transformer与大模型应用开发，完成中文文本处理项目",
        "Transformers and large language model applications in practice",
    ),
    _Stage(
        "ml_cv",
        "机器学习",
        "计算机视觉",
        _A,
        ("CV", "OpenCV", "图像识别"),
        ("计算机视觉：OpenCV与图像识别", "目标检测实战"),
        ("Computer Vision with OpenCV",),
        "图像处理、目标检测与识别项目实战",
        "Image processing, detection and recognition projects",
    ),
    # Web前端
    _Stage(
        "fe_html",
        "Web前端",
        "HTML与CSS",
        _B,
        ("HTML", "CSS", "网页制作"),
        ("HTML5+CSS3零基础入门", "网页制作从零开始", "CSS布局与Flexbox实战"),
        ("HTML & CSS for Beginners", "Modern CSS Layouts"),
        "从标签到Flexbox与Grid布局，独立完成响应式网页",
        "From tags to Flexbox and Grid: build responsive pages",
    ),
    _Stage(
        "fe_js",
        "Web前端",
        "JavaScript",
        _I,
        ("JavaScript", "ES6", "DOM"),
        ("JavaScript核心语法精讲", "ES6+现代JavaScript实战", "JavaScript从入门到精通"),
        ("JavaScript Essentials", "Modern JavaScript (ES6+)"),
        "掌握JavaScript语法、DOM操作与异步编程",
        "JavaScript syntax, the DOM and asynchronous programming",
    ),
    _Stage(
        "fe_ts",
        "Web前端",
        "TypeScript",
        _I,
        ("TypeScript", "类型系统"),
        ("TypeScript入门与实战", "TypeScript类型体操"),
        ("TypeScript Deep Dive",),
        "用TypeScript的类型系统写出更可靠的前端代码",
        "Write safer front-end code with TypeScript's type system",
    ),
    _Stage(
        "fe_react",
        "Web前端",
        "React",
        _A,
        ("React", "Hooks", "前端框架"),
        ("React从入门到项目实战", "React Hooks深入浅出", "React+Next.js全栈开发"),
        ("React Fundamentals and Hooks", "Full-Stack React with Next.js"),
        "用React和Hooks开发组件化的单页应用",
        "Build component-based single-page apps with React and Hooks",
    ),
    _Stage(
        "fe_vue",
        "Web前端",
        "Vue",
        _A,
        ("Vue3", "前端框架", "组件化"),
        ("Vue3+TypeScript企业级项目实战", "Vue.js快速上手", "Vue3组件库开发"),
        ("Vue 3 in Practice",),
        "从组合式API到工程化，完成企业级Vue3项目",
        "From the Composition API to tooling: a production Vue 3 project",
    ),
    # Java后端
    _Stage(
        "java_basic",
        "Java后端",
        "Java基础",
        _B,
        ("Java", "面向对象", "编程入门"),
        ("Java零基础入门", "Java核心技术精讲", "Java面向对象编程"),
        ("Java Programming for Beginners",),
        "系统学习Java语法、集合与面向对象设计",
        "Java syntax, collections and object-oriented design",
    ),
    _Stage(
        "java_spring",
        "Java后端",
        "Spring Boot",
        _I,
        ("Spring Boot", "MyBatis", "后端开发"),
        ("Spring Boot企业级开发实战", "SSM框架整合开发", "Spring Boot快速入门"),
        ("Spring Boot in Action",),
        "用Spring Boot与MyBatis开发RESTful后端服务",
        "Build RESTful services with Spring Boot and MyBatis",
    ),
    _Stage(
        "java_micro",
        "Java后端",
        "微服务",
        _A,
        ("Spring Cloud", "微服务", "分布式"),
        ("Spring Cloud微服务架构实战", "分布式系统设计与实践"),
        ("Microservices with Spring Cloud",),
        "服务拆分、注册发现、熔断限流与分布式事务",
        "Service discovery, circuit breakers and distributed transactions",
    ),
    _Stage(
        "java_jvm",
        "Java后端",
        "JVM与并发",
        _A,
        ("JVM", "并发编程", "性能调优"),
        ("深入理解JVM与性能调优", "Java并发编程实战"),
        ("Java Concurrency Masterclass",),
        "深入JVM内存模型、垃圾回收与并发编程",
        "The JVM memory model, garbage collection and concurrency",
    ),
    _Stage(
        "java_interview",
        "Java后端",
        "面试",
        _I,
        ("面试", "八股文", "求职"),
        ("Java面试通关宝典", "大厂Java面试题精讲"),
        (),
        "梳理高频面试题与项目表达，助你拿到心仪offer",
        "Common interview questions and how to present your projects",
    ),
    # 数据库
    _Stage(
        "db_sql",
        "数据库",
        "SQL入门",
        _B,
        ("SQL", "MySQL", "数据库"),
        ("MySQL数据库零基础入门", "SQL语句从入门到精通"),
        ("SQL Basics with MySQL",),
        "学会建表、增删改查与多表连接",
        "Create tables, query, join and update data in MySQL",
    ),
    _Stage(
        "db_mysql",
        "数据库",
        "MySQL优化",
        _I,
        ("索引", "性能优化", "MySQL"),
        ("MySQL索引与性能优化", "高性能MySQL实战"),
        ("MySQL Performance Tuning",),
        "理解索引、执行计划与锁，解决慢查询",
        "Indexes, query plans and locks: fix slow queries",
    ),
    _Stage(
        "db_redis",
        "数据库",
        "Redis",
        _I,
        ("Redis", "缓存", "NoSQL"),
        ("Redis缓存实战", "Redis核心原理与应用"),
        ("Redis in Practice",),
        "掌握Redis数据结构、缓存设计与高可用",
        "Redis data structures, caching patterns and high availability",
    ),
    _Stage(
        "db_nosql",
        "数据库",
        "MongoDB",
        _I,
        ("MongoDB", "NoSQL", "文档数据库"),
        ("MongoDB入门与实战",),
        ("MongoDB for Developers",),
        "文档模型设计、聚合管道与副本集",
        "Document modelling, aggregation pipelines and replica sets",
    ),
    _Stage(
        "db_bigdata",
        "数据库",
        "大数据",
        _A,
        ("数据仓库", "Hive", "Spark"),
        ("数据仓库建模与Hive实战", "大数据开发：Hadoop与Spark"),
        ("Data Warehousing with Hive and Spark",),
        "数仓分层建模与Spark批处理",
        "Layered warehouse modelling and batch processing with Spark",
    ),
    # 产品经理
    _Stage(
        "pm_intro",
        "产品经理",
        "产品入门",
        _B,
        ("产品经理", "入行", "转行"),
        ("产品经理入门：从0到1做产品", "零基础转行产品经理"),
        ("Product Management 101",),
        "了解产品经理的职责、工作流程与必备技能",
        "What product managers do, their workflow and core skills",
    ),
    _Stage(
        "pm_proto",
        "产品经理",
        "需求与原型",
        _I,
        ("Axure", "原型设计", "需求分析"),
        ("Axure原型设计实战", "需求分析与PRD撰写"),
        ("Wireframing and Prototyping",),
        "从用户需求到原型与PRD，完整走一遍产品设计",
        "From user needs to wireframes and a product spec",
    ),
    _Stage(
        "pm_data",
        "产品经理",
        "数据驱动",
        _A,
        ("数据分析", "增长", "A/B测试"),
        ("数据驱动的产品增长", "用户增长与A/B测试"),
        ("Data-Driven Product Management",),
        "用数据指标与实验驱动产品迭代",
        "Use metrics and experiments to steer a product",
    ),
    _Stage(
        "pm_ai",
        "产品经理",
        "AI产品经理",
        _A,
        ("AI", "大模型", "产品设计"),
        ("AI产品经理实战", "大模型产品设计"),
        ("AI Product Management",),
        "理解AI能力边界，设计可落地的AI产品",
        "Design AI products that work within the technology's limits",
    ),
    # UI设计
    _Stage(
        "ui_tools",
        "UI设计",
        "设计工具",
        _B,
        ("Figma", "Photoshop", "设计入门"),
        ("Figma零基础入门", "Photoshop从入门到精通"),
        ("Figma for Beginners",),
        "熟练使用Figma与Photoshop完成基础设计",
        "Get fluent in Figma and Photoshop",
    ),
    _Stage(
        "ui_visual",
        "UI设计",
        "视觉设计",
        _I,
        ("UI设计", "配色", "排版"),
        ("UI视觉设计系统课", "移动端UI设计实战"),
        ("UI Visual Design Principles",),
        "配色、排版、图标与组件规范",
        "Colour, typography, icons and component guidelines",
    ),
    _Stage(
        "ui_motion",
        "UI设计",
        "动效设计",
        _I,
        ("动效", "After Effects", "交互动画"),
        ("UI动效设计：AE实战",),
        ("Motion Design for UI",),
        "用After Effects为界面设计流畅的动效",
        "Smooth interface animations with After Effects",
    ),
    _Stage(
        "ui_ux",
        "UI设计",
        "交互设计",
        _A,
        ("UX", "交互", "用户研究"),
        ("交互设计与用户体验", "UX用户研究方法"),
        ("UX Design and User Research",),
        "用户研究、信息架构与可用性测试",
        "User research, information architecture and usability testing",
    ),
    # 英语
    _Stage(
        "en_phonics",
        "英语",
        "发音与基础",
        _B,
        ("英语", "音标", "发音"),
        ("英语音标与发音纠正", "零基础英语入门", "新概念英语第一册精讲"),
        ("English Pronunciation Basics",),
        "从音标开始，纠正发音，打好英语基础",
        "Fix your pronunciation and build a solid foundation",
    ),
    _Stage(
        "en_grammar",
        "英语",
        "语法词汇",
        _B,
        ("语法", "词汇", "英语"),
        ("英语语法全解", "核心词汇10000", "零基础英语语法"),
        ("English Grammar in Use",),
        "系统梳理英语语法，高效积累核心词汇",
        "Systematic grammar and high-frequency vocabulary",
    ),
    _Stage(
        "en_speaking",
        "英语",
        "口语",
        _I,
        ("口语", "听力", "英语"),
        ("英语口语30天速成", "地道美式口语", "商务英语口语"),
        ("Everyday English Conversation", "Business English Communication"),
        "大量情景对话练习，敢说、会说、说地道",
        "Practise real-life conversations until you speak with confidence",
    ),
    _Stage(
        "en_cet",
        "英语",
        "四六级",
        _I,
        ("四六级", "考试", "英语"),
        ("大学英语四级通关", "英语六级高分突破"),
        (),
        "听力、阅读、写作、翻译全题型精讲",
        "All CET-4/6 question types explained",
    ),
    _Stage(
        "en_ielts",
        "英语",
        "雅思托福",
        _A,
        ("雅思", "托福", "IELTS"),
        ("雅思7分冲刺班", "托福100+全科精讲", "雅思写作高分技巧"),
        ("IELTS Academic Preparation", "TOEFL iBT Complete Prep"),
        "全科提分策略与真题训练，助力出国留学",
        "Strategies and past-paper practice for every section",
    ),
    # 日语
    _Stage(
        "ja_kana",
        "日语",
        "五十音",
        _B,
        ("日语", "五十音", "零基础"),
        ("日语五十音零基础入门", "标准日本语初级上"),
        ("Japanese for Beginners: Hiragana & Katakana",),
        "从五十音到简单会话，轻松入门日语",
        "From hiragana and katakana to simple conversations",
    ),
    _Stage(
        "ja_talk",
        "日语",
        "日语口语",
        _I,
        ("口语", "旅游日语", "日语"),
        ("实用日语口语", "旅游日语速成"),
        (),
        "覆盖旅游、购物、职场等常用场景会话",
        "Everyday Japanese for travel, shopping and work",
    ),
    _Stage(
        "ja_n3",
        "日语",
        "N4-N3",
        _I,
        ("JLPT", "N3", "日语"),
        ("日语N3全程班", "标准日本语初级下"),
        ("JLPT N3 Preparation",),
        "语法、词汇与听力系统训练，稳过N3",
        "Grammar, vocabulary and listening for JLPT N3",
    ),
    _Stage(
        "ja_n2",
        "日语",
        "N2",
        _A,
        ("JLPT", "N2", "日语"),
        ("日语N2冲刺班", "N2语法精讲"),
        (),
        "N2高频语法与阅读技巧，冲刺高分",
        "High-frequency grammar and reading tactics for N2",
    ),
    _Stage(
        "ja_n1",
        "日语",
        "N1",
        _A,
        ("JLPT", "N1", "日语"),
        ("日语N1高分突破",),
        (),
        "N1真题精讲与长难句阅读",
        "Past papers and complex reading for N1",
    ),
    # 考研数学
    _Stage(
        "km_calc",
        "考研数学",
        "高等数学",
        _I,
        ("考研", "高数", "微积分"),
        ("考研高等数学基础班", "高数一本通", "考研高数强化班"),
        ("Calculus for Graduate Entrance Exams",),
        "极限、导数、积分与级数，夯实考研高数",
        "Limits, derivatives, integrals and series for the exam",
    ),
    _Stage(
        "km_linalg",
        "考研数学",
        "线性代数",
        _I,
        ("考研", "线性代数", "矩阵"),
        ("考研线性代数精讲", "线代九讲"),
        ("Linear Algebra Essentials",),
        "矩阵、向量空间与特征值专题突破",
        "Matrices, vector spaces and eigenvalues",
    ),
    _Stage(
        "km_prob",
        "考研数学",
        "概率论",
        _I,
        ("考研", "概率论", "数理统计"),
        ("考研概率论与数理统计", "概率论九讲"),
        ("Probability and Statistics",),
        "随机变量、分布与参数估计",
        "Random variables, distributions and estimation",
    ),
    _Stage(
        "km_exam",
        "考研数学",
        "真题冲刺",
        _A,
        ("考研", "真题", "冲刺"),
        ("考研数学真题精讲", "考研数学冲刺押题班"),
        (),
        "近二十年真题逐题精讲，考前冲刺",
        "Twenty years of past papers, problem by problem",
    ),
    # 摄影
    _Stage(
        "ph_basic",
        "摄影",
        "摄影入门",
        _B,
        ("摄影", "相机", "手机摄影"),
        ("数码摄影零基础入门", "手机摄影技巧", "相机参数全解析"),
        ("Photography Basics",),
        "读懂光圈、快门与ISO，拍出清晰好看的照片",
        "Aperture, shutter speed and ISO explained",
    ),
    _Stage(
        "ph_comp",
        "摄影",
        "构图与用光",
        _I,
        ("构图", "用光", "人像"),
        ("摄影构图与用光", "人像摄影实战", "风光摄影进阶"),
        ("Composition and Lighting",),
        "掌握经典构图与自然光、人造光的运用",
        "Classic composition and working with natural and studio light",
    ),
    _Stage(
        "ph_post",
        "摄影",
        "后期修图",
        _I,
        ("Lightroom", "后期", "调色"),
        ("Lightroom后期调色", "Photoshop人像精修"),
        ("Lightroom Photo Editing",),
        "调色、修图与批量处理工作流",
        "Colour grading, retouching and batch workflows",
    ),
    _Stage(
        "ph_video",
        "摄影",
        "短视频",
        _I,
        ("短视频", "剪辑", "Premiere"),
        ("短视频拍摄与剪辑", "Vlog从拍摄到剪辑", "剪映短视频创作"),
        ("Video Editing with Premiere Pro",),
        "从脚本、拍摄到剪辑，做出有传播力的短视频",
        "Script, shoot and edit short videos that travel",
    ),
    # 财务会计
    _Stage(
        "fin_basic",
        "财务会计",
        "会计基础",
        _B,
        ("会计", "财务", "零基础"),
        ("零基础学会计", "会计基础与实务"),
        ("Accounting Fundamentals",),
        "借贷记账、会计分录与报表编制入门",
        "Double-entry bookkeeping, journal entries and statements",
    ),
    _Stage(
        "fin_junior",
        "财务会计",
        "初级会计",
        _I,
        ("初级会计职称", "考证", "会计"),
        ("初级会计职称全程班", "初级会计实务精讲"),
        (),
        "紧扣考纲的初级会计实务与经济法基础",
        "Exam-focused junior accountant certificate course",
    ),
    _Stage(
        "fin_cpa",
        "财务会计",
        "CPA",
        _A,
        ("CPA", "注册会计师", "考证"),
        ("CPA注册会计师会计科目精讲", "CPA审计通关班"),
        ("CPA Exam Review",),
        "CPA核心科目精讲与历年真题",
        "Core CPA subjects with past exam questions",
    ),
    _Stage(
        "fin_analysis",
        "财务会计",
        "财务分析",
        _I,
        ("财务报表", "财务分析", "估值"),
        ("财务报表分析实战", "读懂财务报表"),
        ("Financial Statement Analysis",),
        "读懂三大报表，识别企业经营风险",
        "Read the three statements and spot business risks",
    ),
    _Stage(
        "fin_tax",
        "财务会计",
        "税务",
        _A,
        ("税务", "个税", "筹划"),
        ("企业税务筹划实务", "个税与社保实操"),
        (),
        "增值税、企业所得税与合规筹划",
        "VAT, corporate income tax and compliant planning",
    ),
    # 职场技能
    _Stage(
        "ofc_excel",
        "职场技能",
        "Excel办公",
        _B,
        ("Excel", "办公", "效率"),
        ("Excel零基础到高手", "Excel函数公式大全", "WPS表格高效办公"),
        ("Microsoft Excel Essentials",),
        "表格、函数与图表，提升日常办公效率",
        "Tables, formulas and charts for everyday office work",
    ),
    _Stage(
        "ofc_ppt",
        "职场技能",
        "PPT",
        _B,
        ("PPT", "演示", "汇报"),
        ("PPT设计与演讲技巧", "高效PPT制作"),
        ("PowerPoint Presentation Design",),
        "做出逻辑清晰、视觉专业的汇报PPT",
        "Clear, professional presentation decks",
    ),
    _Stage(
        "ofc_comm",
        "职场技能",
        "沟通写作",
        _I,
        ("沟通", "写作", "职场"),
        ("职场高效沟通", "商务写作与邮件", "向上管理与汇报"),
        ("Business Writing Skills",),
        "结构化表达、邮件写作与跨部门沟通",
        "Structured communication, emails and cross-team collaboration",
    ),
    _Stage(
        "ofc_pm",
        "职场技能",
        "项目管理",
        _A,
        ("PMP", "项目管理", "敏捷"),
        ("PMP项目管理认证备考", "敏捷项目管理Scrum"),
        ("Agile Project Management with Scrum",),
        "项目计划、风险控制与敏捷实践",
        "Planning, risk control and agile practice",
    ),
)

# prerequisite chains of stages; a learner following one takes the stages in this order
_TRACKS: tuple[tuple[str, ...], ...] = (
    ("py_basic", "da_pandas", "ml_intro", "ml_dl"),
    ("py_basic", "da_pandas", "da_viz"),
    ("py_basic", "py_adv", "py_web"),
    ("py_basic", "py_crawler", "da_pandas"),
    ("py_basic", "py_auto"),
    ("da_excel", "da_sql", "da_pandas", "da_bi"),
    ("ml_math", "ml_intro", "ml_nlp"),
    ("ml_math", "ml_intro", "ml_cv"),
    ("fe_html", "fe_js", "fe_react"),
    ("fe_html", "fe_js", "fe_ts", "fe_vue"),
    ("java_basic", "java_spring", "java_micro"),
    ("java_basic", "java_jvm", "java_interview"),
    ("db_sql", "db_mysql", "db_redis"),
    ("db_sql", "db_nosql", "db_bigdata"),
    ("pm_intro", "pm_proto", "pm_data", "pm_ai"),
    ("ui_tools", "ui_visual", "ui_ux"),
    ("ui_tools", "ui_visual", "ui_motion"),
    ("en_phonics", "en_grammar", "en_cet", "en_ielts"),
    ("en_phonics", "en_speaking"),
    ("ja_kana", "ja_n3", "ja_n2", "ja_n1"),
    ("ja_kana", "ja_talk"),
    ("km_calc", "km_linalg", "km_prob", "km_exam"),
    ("ph_basic", "ph_comp", "ph_post"),
    ("ph_basic", "ph_video"),
    ("fin_basic", "fin_junior", "fin_cpa"),
    ("fin_basic", "fin_analysis", "fin_tax"),
    ("ofc_excel", "ofc_ppt", "ofc_comm"),
    ("ofc_excel", "da_excel", "da_bi"),
    ("ofc_comm", "ofc_pm"),
)

_ZH_SUFFIXES = (
    "",
    "（2026新版）",
    "｜零基础",
    "训练营",
    "·项目实战",
    "精讲",
    "系统课",
    "（第2版）",
)
_EN_SUFFIXES = ("", " (2026 Edition)", ": Hands-on Projects", " Bootcamp", " Masterclass")
_ZH_SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹袁邓许傅沈曾彭吕"
_ZH_GIVEN = (
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "磊",
    "强",
    "洋",
    "艳",
    "勇",
    "军",
    "杰",
    "娟",
    "涛",
    "明",
    "超",
    "秀英",
    "晓东",
    "海燕",
    "志强",
    "建华",
    "思远",
    "子涵",
    "雨桐",
    "文博",
    "一鸣",
    "佳怡",
)
_EN_FIRST = (
    "Alice",
    "David",
    "Emily",
    "James",
    "Sarah",
    "Michael",
    "Laura",
    "Daniel",
    "Olivia",
    "Kevin",
    "Grace",
    "Ryan",
    "Hannah",
    "Thomas",
    "Chloe",
    "Peter",
)
_EN_LAST = (
    "Smith",
    "Johnson",
    "Brown",
    "Taylor",
    "Miller",
    "Wilson",
    "Clark",
    "Lee",
    "Walker",
    "Young",
    "Hall",
    "King",
    "Wright",
    "Green",
)
_PRICES = (
    (29, 49, 69, 99, 129, 199),
    (99, 149, 199, 299, 399, 599),
    (299, 499, 699, 999, 1299, 1999),
)
_EXAM_SUBJECTS = frozenset({"考研数学", "财务会计"})

_CITIES = (
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "成都",
    "武汉",
    "南京",
    "西安",
    "重庆",
    "苏州",
    "天津",
    "长沙",
    "郑州",
    "青岛",
    "厦门",
    "合肥",
    "沈阳",
)
_CITY_W = (10, 10, 7, 8, 6, 6, 5, 5, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2)
_AGE_BANDS = ("18-22", "23-27", "28-35", "36-45", "46+")
_AGE_W = (0.22, 0.34, 0.28, 0.12, 0.04)
_GOALS = ("转行", "升职", "兴趣", "考试")
_SIGNUP = ("app_store", "wechat", "baidu_search", "douyin", "bilibili", "referral", "website")
_SIGNUP_W = (0.22, 0.25, 0.14, 0.12, 0.1, 0.07, 0.1)
_CHANNELS = ("web", "app", "chatbot")

# engagement modes: follow a track, browse an interest, explore popular courses
_TRACK, _BROWSE, _EXPLORE = 0, 1, 2
_P_TRACK, _P_BROWSE = 0.5, 0.36
_P_SEQUEL = 0.55
_SESSION_GAP = 30 * 60
_DAY = 86400


@dataclass
class DemoData:
    """The generated data set: JSON-ready dicts in the shapes of docs/design.md sections 2 and 4."""

    items: list[dict[str, Any]]
    users: list[dict[str, Any]]
    events: list[dict[str, Any]]
    seed: int = 7
    end: str = "2026-11-01T00:00:00Z"
    counts: dict[str, int] = field(default_factory=dict)
    # Ground truth for tests and benchmarks (never written to the files): each learner's 1-3
    # subject interests (top-level categories), the main one first.
    interests: dict[str, list[str]] = field(default_factory=dict)


def _parse_end(end: datetime | str) -> int:
    if isinstance(end, str):
        end = datetime.fromisoformat(end.replace("Z", "+00:00"))
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return int(end.timestamp())


def _iso(seconds: np.ndarray) -> list[str]:
    text = np.datetime_as_string(
        np.asarray(seconds, dtype="int64").astype("datetime64[s]"), unit="s"
    )
    return [t + "Z" for t in text.tolist()]


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``total`` proportional to ``weights``."""
    raw = total * weights / weights.sum()
    counts = np.floor(raw).astype(np.int64)
    rest = total - int(counts.sum())
    order = np.lexsort((np.arange(len(raw)), -(raw - counts)))
    counts[order[:rest]] += 1
    return counts


def _pick_name(rng: np.random.Generator, english: bool, taken: set[str]) -> str:
    for _ in range(50):
        if english:
            name = (
                f"{_EN_FIRST[rng.integers(len(_EN_FIRST))]} {_EN_LAST[rng.integers(len(_EN_LAST))]}"
            )
        else:
            name = (
                _ZH_SURNAMES[rng.integers(len(_ZH_SURNAMES))]
                + _ZH_GIVEN[rng.integers(len(_ZH_GIVEN))]
            )
        if name not in taken:
            break
    taken.add(name)
    return name


class _Catalog:
    """Items plus the hidden structure (stage, popularity, sequels) that drives behaviour."""

    def __init__(self, rng: np.random.Generator, n_items: int, end_ts: int) -> None:
        subjects = list(SUBJECTS)
        stage_w = np.array(
            [
                SUBJECTS[st.subject] / sum(1 for x in _STAGES if x.subject == st.subject)
                for st in _STAGES
            ]
        )
        per_stage = _allocate(n_items, stage_w)
        stage_of = np.repeat(np.arange(len(_STAGES)), per_stage)
        stage_of = stage_of[rng.permutation(n_items)]  # interleave subjects in id order
        self.n = n_items
        self.stage = stage_of
        self.subject = np.array(
            [subjects.index(_STAGES[s].subject) for s in stage_of], dtype=np.int64
        )
        self.level = np.array([_STAGES[s].level for s in stage_of], dtype=np.int64)
        # ~3% brand-new courses without any behaviour yet (cold items)
        self.new = rng.random(n_items) < 0.03

        # teachers: a pool per subject, each writing courses at several stages
        taken: set[str] = set()
        teacher_names: list[str] = []
        teacher_en: list[bool] = []
        self.teacher = np.zeros(n_items, dtype=np.int64)
        for s_idx in range(len(subjects)):
            members = np.flatnonzero(self.subject == s_idx)
            if members.size == 0:
                continue
            n_t = max(2, members.size // 7)
            first = len(teacher_names)
            for _ in range(n_t):
                english = bool(rng.random() < 0.22)
                teacher_en.append(english)
                teacher_names.append(_pick_name(rng, english, taken))
            fame = 1.0 / np.arange(1, n_t + 1) ** 0.7
            choice = np.searchsorted(
                np.cumsum(fame) / fame.sum(), rng.random(members.size), side="right"
            )
            self.teacher[members] = first + np.minimum(choice, n_t - 1)
        english = np.array(teacher_en)[self.teacher]
        has_en = np.array([bool(_STAGES[s].titles_en) for s in stage_of])
        self.lang = np.where(english & has_en, 1, 0)  # 0 zh, 1 en

        # power-law popularity inside each subject
        self.pop = np.zeros(n_items)
        for s_idx in range(len(subjects)):
            members = np.flatnonzero(self.subject == s_idx)
            ranks = rng.permutation(members.size)
            self.pop[members] = 1.0 / (ranks + 1.0) ** 0.95
        free_p = np.array([0.25, 0.1, 0.04])[self.level]
        self.free = rng.random(n_items) < free_p
        self.pop *= np.where(self.free, 1.6, 1.0) * np.where(self.lang == 1, 0.6, 1.0)
        self.pop[self.new] = 0.0

        price_idx = rng.integers(0, 6, n_items)
        prices = np.array(_PRICES)[self.level, price_idx]
        exam = np.array([subjects[s] in _EXAM_SUBJECTS for s in self.subject])
        prices = np.where(exam, prices * 2 - 1, prices)
        prices = np.where(self.free, 0, prices)
        hours_lo = np.array([3.0, 8.0, 15.0])[self.level]
        hours = np.round((hours_lo + rng.gamma(2.0, hours_lo / 1.5)) * 2) / 2
        available = rng.random(n_items) >= 0.03
        available[self.new] = True
        created = np.where(
            self.new,
            end_ts - rng.integers(1 * _DAY, 21 * _DAY, n_items),
            end_ts - rng.integers((WINDOW_DAYS + 10) * _DAY, 1100 * _DAY, n_items),
        )
        created_iso = _iso(created)

        used_titles: set[str] = set()
        self.items: list[dict[str, Any]] = []
        for i in range(n_items):
            st = _STAGES[int(stage_of[i])]
            lvl = int(self.level[i])
            en = bool(self.lang[i])
            base_list = st.titles_en if en else st.titles_zh
            base = base_list[int(rng.integers(len(base_list)))]
            suffixes = _EN_SUFFIXES if en else _ZH_SUFFIXES
            title = (
                base + suffixes[int(rng.integers(len(suffixes)))] if rng.random() < 0.6 else base
            )
            k = 2
            while title in used_titles:
                title = f"{base} Vol. {k}" if en else f"{base}（第{k}期）"
                k += 1
            used_titles.add(title)
            teacher = teacher_names[int(self.teacher[i])]
            price = int(prices[i])
            if en:
                description = (
                    f"{st.about_en}. Taught by {teacher}; "
                    f"{hours[i]:g} hours for {LEVELS[lvl]} learners."
                )
            else:
                description = (
                    f"{teacher}老师主讲：{st.about_zh}。"
                    f"适合{_LEVEL_ZH[lvl]}学员，共{hours[i]:g}小时。"
                )
            tags = [*st.tags[: 2 + int(rng.integers(2))], _LEVEL_ZH[lvl], LEVELS[lvl]]
            if price == 0:
                tags.append("免费")
            if "实战" in title or "Projects" in title:
                tags.append("实战")
            categories = [st.subject, st.name]
            self.items.append(
                {
                    "item_id": f"c{i + 1:04d}",
                    "title": title,
                    "description": description,
                    "categories": categories,
                    "tags": tags,
                    "attributes": {
                        "price": price,
                        "currency": "CNY",
                        "level": LEVELS[lvl],
                        "language": "en" if en else "zh",
                        "teacher": teacher,
                        "duration_hours": float(hours[i]),
                    },
                    "available": bool(available[i]),
                    "created_at": created_iso[i],
                }
            )

        self._build_samplers(rng)

    def _build_samplers(self, rng: np.random.Generator) -> None:
        # learner-specific multipliers: language preference (zh-only / bilingual),
        # price sensitivity (free courses favoured) and level fit
        lang_mult = np.array([[1.0, 0.25], [0.8, 1.6]])
        level_mult = np.array([[1.0, 0.45, 0.15], [0.5, 1.0, 0.6], [0.25, 0.7, 1.0]])
        stage_key = {st.key: k for k, st in enumerate(_STAGES)}
        n_stages = len(_STAGES)
        self.stage_members = [np.flatnonzero(self.stage == k) for k in range(n_stages)]

        def cum(members: np.ndarray, weights: np.ndarray) -> tuple[list[float], list[int]] | None:
            c = np.cumsum(weights)
            if members.size == 0 or c[-1] <= 0:
                return None
            return c.tolist(), members.tolist()

        self.stage_sampler: dict[tuple[int, int, int], Any] = {}
        self.subject_sampler: dict[tuple[int, int, int, int], Any] = {}
        self.global_sampler: dict[tuple[int, int], Any] = {}
        all_items = np.arange(self.n)
        subject_w = np.array(list(SUBJECTS.values()))[self.subject]
        for lp in (0, 1):
            for pp in (0, 1):
                w = self.pop * lang_mult[lp][self.lang] * np.where(self.free & (pp == 1), 3.0, 1.0)
                self.global_sampler[lp, pp] = cum(all_items, w * subject_w)
                for k in range(n_stages):
                    m = self.stage_members[k]
                    self.stage_sampler[k, lp, pp] = cum(m, w[m])
                for s_idx in range(len(SUBJECTS)):
                    m = np.flatnonzero(self.subject == s_idx)
                    for lvl in range(3):
                        self.subject_sampler[s_idx, lvl, lp, pp] = cum(
                            m, w[m] * level_mult[lvl][self.level[m]]
                        )

        # tracks restricted to stages that have courses
        self.tracks: list[list[int]] = []
        for chain in _TRACKS:
            kept = [
                stage_key[k] for k in chain if self.stage_sampler[stage_key[k], 0, 0] is not None
            ]
            if kept:
                self.tracks.append(kept)
        # a track serves every subject it passes through
        subject_index = {name: i for i, name in enumerate(SUBJECTS)}
        self.tracks_of_subject: list[list[int]] = [[] for _ in SUBJECTS]
        for t, chain in enumerate(self.tracks):
            for s_idx in sorted({subject_index[_STAGES[k].subject] for k in chain}):
                self.tracks_of_subject[s_idx].append(t)

        # each course's sequel in the next stage of every track: the same teacher's most
        # popular course there if any, otherwise a popularity-weighted draw
        self.sequel: dict[tuple[int, int], int] = {}
        pairs = sorted(
            {(a, b) for chain in self.tracks for a, b in zip(chain, chain[1:], strict=False)}
        )
        for a, b in pairs:
            nxt = self.stage_members[b]
            nxt = nxt[self.pop[nxt] > 0]
            if nxt.size == 0:
                continue
            c = np.cumsum(self.pop[nxt])
            for i in self.stage_members[a].tolist():
                same = nxt[self.teacher[nxt] == self.teacher[i]]
                if same.size and rng.random() < 0.85:
                    j = int(same[np.argmax(self.pop[same])])
                else:
                    j = int(
                        nxt[
                            min(
                                int(np.searchsorted(c, rng.random() * c[-1], side="right")),
                                nxt.size - 1,
                            )
                        ]
                    )
                self.sequel[i, b] = j


def _draw(sampler: tuple[list[float], list[int]] | None, u: float) -> int:
    if sampler is None:
        return -1
    c, members = sampler
    return members[min(bisect.bisect_right(c, u * c[-1]), len(members) - 1)]


def _make_users(
    rng: np.random.Generator, n_users: int, n_subjects_active: np.ndarray, end_ts: int
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    subject_w = np.array(list(SUBJECTS.values())) * n_subjects_active
    n_int = np.searchsorted([0.45, 0.85], rng.random(n_users), side="right") + 1
    gumbel = -np.log(-np.log(rng.random((n_users, len(SUBJECTS)))))
    with np.errstate(divide="ignore"):
        keys = np.log(subject_w)[None, :] + gumbel
    ranked = np.argsort(-keys, axis=1, kind="stable")[:, :3]
    level = np.searchsorted([0.5, 0.85], rng.random(n_users), side="right")
    lang_pref = (rng.random(n_users) < 0.25).astype(np.int64)
    price_pref = (rng.random(n_users) < 0.3).astype(np.int64)
    start = end_ts - rng.integers(1 * _DAY, WINDOW_DAYS * _DAY, n_users)
    signup = start - rng.integers(0, 400 * _DAY, n_users) * (rng.random(n_users) < 0.6)
    signup_day = [d[:10] for d in _iso(signup)]
    city = np.searchsorted(np.cumsum(_CITY_W) / sum(_CITY_W), rng.random(n_users), side="right")
    age = np.searchsorted(np.cumsum(_AGE_W), rng.random(n_users), side="right")
    chan = np.searchsorted(np.cumsum(_SIGNUP_W), rng.random(n_users), side="right")
    goal_u = rng.random(n_users)
    declared = rng.random(n_users) < 0.5
    subjects = list(SUBJECTS)
    exam_like = {"考研数学", "财务会计", "英语", "日语"}
    users = []
    for u in range(n_users):
        primary = subjects[int(ranked[u, 0])]
        goal_w = (0.15, 0.2, 0.15, 0.5) if primary in exam_like else (0.35, 0.35, 0.25, 0.05)
        goal = _GOALS[min(int(np.searchsorted(np.cumsum(goal_w), goal_u[u], side="right")), 3)]
        attributes: dict[str, Any] = {
            "city": _CITIES[min(int(city[u]), len(_CITIES) - 1)],
            "age_band": _AGE_BANDS[min(int(age[u]), len(_AGE_BANDS) - 1)],
            "goal": goal,
            "signup_channel": _SIGNUP[min(int(chan[u]), len(_SIGNUP) - 1)],
            "signup_date": signup_day[u],
        }
        if declared[u]:
            attributes["declared_interests"] = [subjects[int(s)] for s in ranked[u, : n_int[u]]]
        users.append({"user_id": f"u{u + 1:05d}", "attributes": attributes})
    hidden = {
        "n_int": n_int,
        "interests": ranked,
        "level": level,
        "lang": lang_pref,
        "price": price_pref,
        "start": start,
    }
    return users, hidden


def generate(
    seed: int = 7, n_users: int = 20000, n_items: int = 2000, end: datetime | str = DEFAULT_END
) -> DemoData:
    """Generate the data set. Same arguments → identical output; ``end`` is the newest moment."""
    if n_users < 1 or n_items < 1:
        raise ValueError("n_users and n_items must be positive")
    end_ts = _parse_end(end)
    catalog_rng, user_rng, event_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    cat = _Catalog(catalog_rng, n_items, end_ts)
    active = np.array(
        [float(cat.subject_sampler[s, 0, 0, 0] is not None) for s in range(len(SUBJECTS))]
    )
    users, hu = _make_users(user_rng, n_users, active, end_ts)

    # --- engagements: which course, in which order -------------------------------------------
    rng = event_rng
    n_eng = 1 + np.minimum(np.floor(rng.lognormal(1.45, 0.8, n_users)), 80).astype(np.int64)
    total = int(n_eng.sum())
    draws = rng.random((total, 7)).tolist()
    interest_w = ((1.0,), (0.65, 0.35), (0.5, 0.3, 0.2))
    eng_user = np.repeat(np.arange(n_users), n_eng)
    eng_item = np.empty(total, dtype=np.int64)
    eng_mode = np.empty(total, dtype=np.int64)
    n_int_l = hu["n_int"].tolist()
    interests_l = hu["interests"].tolist()
    level_l = hu["level"].tolist()
    lang_l = hu["lang"].tolist()
    price_l = hu["price"].tolist()
    stage_sampler, subject_sampler, global_sampler = (
        cat.stage_sampler,
        cat.subject_sampler,
        cat.global_sampler,
    )
    tracks, tracks_of_subject, sequel = cat.tracks, cat.tracks_of_subject, cat.sequel
    pos = 0
    for u in range(n_users):
        k = n_int_l[u]
        cw = interest_w[k - 1]
        my_subjects = interests_l[u][:k]
        lvl, lp, pp = level_l[u], lang_l[u], price_l[u]
        seen: set[int] = set()
        track, step, current = -1, 0, -1
        for _ in range(n_eng[u]):
            r_mode, r_seq, r_pick, r_subj, r_track, r_re1, r_re2 = draws[pos]
            acc, s_idx = 0.0, my_subjects[-1]
            for w, s in zip(cw, my_subjects, strict=False):
                acc += w
                if r_subj < acc:
                    s_idx = s
                    break
            item, mode = -1, _TRACK
            if r_mode < _P_TRACK:
                if track >= 0 and step + 1 < len(tracks[track]):
                    step += 1
                    stage = tracks[track][step]
                    item = sequel.get((current, stage), -1) if r_seq < _P_SEQUEL else -1
                    if item < 0 or item in seen:
                        item = _draw(stage_sampler[stage, lp, pp], r_pick)
                elif tracks_of_subject[s_idx]:
                    options = tracks_of_subject[s_idx]
                    track = options[int(r_track * len(options))]
                    chain = tracks[track]
                    step = min(max(lvl - (r_seq < 0.3), 0), len(chain) - 1)
                    item = _draw(stage_sampler[chain[step], lp, pp], r_pick)
            elif r_mode < _P_TRACK + _P_BROWSE:
                mode = _BROWSE
                item = _draw(subject_sampler[s_idx, lvl, lp, pp], r_pick)
            else:
                mode = _EXPLORE
                item = _draw(global_sampler[lp, pp], r_pick)
            for r in (r_re1, r_re2):  # a different course instead of a repeat, usually
                if item >= 0 and item not in seen:
                    break
                mode = _BROWSE
                item = _draw(subject_sampler[s_idx, lvl, lp, pp], r)
            if item < 0:
                mode = _EXPLORE
                item = _draw(global_sampler[lp, pp], r_pick)
            if mode == _TRACK:
                current = item
            seen.add(item)
            eng_item[pos] = item
            eng_mode[pos] = mode
            pos += 1

    # --- engagement times ------------------------------------------------------------------
    start = hu["start"][eng_user]
    room = (end_ts - 3600) - hu["start"]
    gap_mean = rng.uniform(1.5, 6.0, n_users) * _DAY
    span = np.minimum(room, n_eng * gap_mean)[eng_user]
    frac = rng.random(total)
    first = np.r_[0, np.cumsum(n_eng)[:-1]]
    frac[first] = 0.0
    # sorting the offsets inside each learner's block keeps engagements in generation order,
    # so a track's next step always comes after the step before it
    order = np.lexsort((frac, eng_user))
    frac = frac[order]
    eng_time = start + (frac * span).astype(np.int64)

    # --- funnel ----------------------------------------------------------------------------
    user_subjects = hu["interests"][eng_user]
    n_int_e = hu["n_int"][eng_user]
    subj = cat.subject[eng_item]
    in_interest = np.zeros(total, dtype=bool)
    for j in range(3):
        in_interest |= (user_subjects[:, j] == subj) & (n_int_e > j)
    fit = (eng_mode == _TRACK) | in_interest
    level_ok = np.abs(cat.level[eng_item] - hu["level"][eng_user]) <= 1
    paid = ~cat.free[eng_item]
    R = rng.random((total, 16))

    p_enroll = np.where(eng_mode == _TRACK, 0.42, np.where(fit, 0.26, 0.05)) * np.where(
        level_ok, 1.0, 0.5
    )
    p_enroll = p_enroll * np.where(paid, 0.85, 1.3)
    enroll = R[:, 0] < p_enroll
    dislike = ~enroll & (R[:, 1] < np.where(fit, 0.004, 0.07))
    entry = np.searchsorted([0.22, 0.65], R[:, 2], side="right")  # 0 search_click, 1 click, 2 none
    extra_views = np.searchsorted([0.65, 0.88, 0.96], R[:, 3], side="right")
    favorite = ~dislike & (R[:, 4] < np.where(fit, 0.11, 0.025))
    cart = paid & ~dislike & np.where(enroll, R[:, 5] < 0.55, R[:, 5] < np.where(fit, 0.07, 0.01))
    purchase = paid & enroll
    complete = enroll & (R[:, 6] < np.where(eng_mode == _TRACK, 0.55, 0.4))
    rate = (complete & (R[:, 7] < 0.55)) | (enroll & ~complete & (R[:, 7] < 0.08))
    c_fit = np.cumsum([0.02, 0.04, 0.12, 0.37])
    c_off = np.cumsum([0.1, 0.16, 0.32, 0.27])
    rating = 1 + np.where(
        fit,
        np.searchsorted(c_fit, R[:, 8], side="right"),
        np.searchsorted(c_off, R[:, 8], side="right"),
    )

    mins = 60
    t0 = eng_time
    t_view = t0 + np.where(entry < 2, (5 + R[:, 9] * 60).astype(np.int64), 0)
    t_fav = t_view + (30 + R[:, 10] * 10 * mins).astype(np.int64)
    t_cart = t_view + (60 + R[:, 11] * 20 * mins).astype(np.int64)
    t_buy = t_cart + (30 + R[:, 12] * 30 * mins).astype(np.int64)
    t_enroll = t_buy + (5 + R[:, 13] * 120).astype(np.int64)
    t_complete = t_enroll + ((1 + rng.exponential(12.0, total)) * _DAY).astype(np.int64)
    t_rate = np.where(complete, t_complete, t_enroll + 3 * _DAY) + (60 + R[:, 14] * _DAY).astype(
        np.int64
    )
    t_dislike = t_view + (10 + R[:, 15] * 300).astype(np.int64)

    parts_eng: list[np.ndarray] = []
    parts_type: list[np.ndarray] = []
    parts_time: list[np.ndarray] = []
    parts_sub: list[np.ndarray] = []

    def add(mask: np.ndarray, type_code: int, times: np.ndarray, sub: int) -> None:
        idx = np.flatnonzero(mask)
        parts_eng.append(idx)
        parts_type.append(np.full(idx.size, type_code, dtype=np.int64))
        parts_time.append(times[idx])
        parts_sub.append(np.full(idx.size, sub, dtype=np.int64))

    everything = np.ones(total, dtype=bool)
    add(entry == 0, _T["search_click"], t0, 0)
    add(entry == 1, _T["click"], t0, 0)
    add(everything, _T["view"], t_view, 1)
    for v in range(1, 4):  # revisits of the course page, minutes to days later
        gap = (5 * mins + rng.random(total) * 3 * _DAY).astype(np.int64) * v
        add(extra_views >= v, _T["view"], t_view + gap, 1 + v)
    add(favorite, _T["favorite"], t_fav, 5)
    add(cart, _T["add_to_cart"], t_cart, 6)
    add(purchase, _T["purchase"], t_buy, 7)
    add(enroll, _T["enroll"], np.where(paid, t_enroll, t_view + (t_enroll - t_buy)), 8)
    add(complete, _T["complete"], t_complete, 9)
    add(rate, _T["rate"], t_rate, 10)
    add(dislike, _T["dislike"], t_dislike, 11)

    ev_eng = np.concatenate(parts_eng)
    ev_type = np.concatenate(parts_type)
    ev_time = np.concatenate(parts_time)
    ev_sub = np.concatenate(parts_sub)
    keep = ev_time <= end_ts  # not-yet-happened steps (e.g. unfinished courses) are dropped
    ev_eng, ev_type, ev_time, ev_sub = ev_eng[keep], ev_type[keep], ev_time[keep], ev_sub[keep]
    ev_user = eng_user[ev_eng]
    tie = ev_eng * 16 + ev_sub

    # sessions: per learner, a gap of more than 30 minutes starts a new one
    by_user = np.lexsort((tie, ev_time, ev_user))
    su, st = ev_user[by_user], ev_time[by_user]
    new_session = np.ones(su.size, dtype=bool)
    new_session[1:] = (su[1:] != su[:-1]) | (st[1:] - st[:-1] > _SESSION_GAP)
    session_global = np.cumsum(new_session) - 1
    first_session_of_user = np.zeros(n_users, dtype=np.int64)
    starts = np.flatnonzero(new_session & np.r_[True, su[1:] != su[:-1]])
    first_session_of_user[su[starts]] = session_global[starts]
    session_num = np.empty(su.size, dtype=np.int64)
    session_num[by_user] = session_global - first_session_of_user[su] + 1
    n_sessions = int(session_global[-1]) + 1 if su.size else 0
    home = np.searchsorted([0.45, 0.85], rng.random(n_users), side="right")
    sess_user = su[new_session]
    sess_channel = np.where(
        rng.random(n_sessions) < 0.75, home[sess_user], rng.integers(0, 3, n_sessions)
    )
    channel = np.empty(su.size, dtype=np.int64)
    channel[by_user] = sess_channel[session_global]

    # the stream, oldest first
    order = np.lexsort((tie, ev_user, ev_time))
    ev_user, ev_type, ev_time = ev_user[order], ev_type[order], ev_time[order]
    ev_item = eng_item[ev_eng[order]]
    ev_value = rating[ev_eng[order]]
    session_num, channel = session_num[order], channel[order]

    user_ids = [u["user_id"] for u in users]
    item_ids = [it["item_id"] for it in cat.items]
    stamps = _iso(ev_time)
    rate_code = _T["rate"]
    events = [
        {
            "event_id": f"e{n + 1:07d}",
            "user_id": user_ids[u],
            "item_id": item_ids[i],
            "type": EVENT_TYPES[t],
            "value": v if t == rate_code else None,
            "timestamp": ts,
            "context": {"channel": _CHANNELS[c], "session_id": f"{user_ids[u]}-s{s}"},
        }
        for n, (u, i, t, v, ts, c, s) in enumerate(
            zip(
                ev_user.tolist(),
                ev_item.tolist(),
                ev_type.tolist(),
                ev_value.tolist(),
                stamps,
                channel.tolist(),
                session_num.tolist(),
                strict=True,
            )
        )
    ]
    end_iso = _iso(np.array([end_ts]))[0]
    counts = {"items": n_items, "users": n_users, "events": len(events)}
    subjects = list(SUBJECTS)
    interests = {
        user_ids[u]: [subjects[int(s)] for s in hu["interests"][u, : int(hu["n_int"][u])]]
        for u in range(n_users)
    }
    return DemoData(
        items=cat.items,
        users=users,
        events=events,
        seed=seed,
        end=end_iso,
        counts=counts,
        interests=interests,
    )


def write_jsonl(data: DemoData, directory: str | Path) -> dict[str, Path]:
    """Write ``items.jsonl``, ``users.jsonl`` and ``events.jsonl`` (UTF-8, one object a line)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, rows in (("items", data.items), ("users", data.users), ("events", data.events)):
        path = out / f"{name}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(
                json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows
            )
        paths[name] = path
    return paths
