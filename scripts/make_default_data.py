"""Generate the default data shipped in `src/instructrl/data/default/`.

Run from the repository root:

```bash
python scripts/make_default_data.py                      # writes src/instructrl/data/default/
python scripts/make_default_data.py --out /tmp/data --seed 1234
```

Everything is derived deterministically from `--seed` (default `SEED`), so two runs with the same Python version
write byte-identical files. The Python version matters only for the pretraining-mix corpus, whose text comes from
the standard library's docstrings.

Written files (JSON lines, UTF-8, one object per line):

- `sft_train.jsonl`, `sft_eval.jsonl`: demonstrations in TRL's conversational prompt/completion format,
  `{"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}`. Each prompt combines an
  everyday topic from the `TOPICS` table below with a task template (`TASK_TEMPLATES`) and usually a length
  instruction (`make_instruction`). The completion is assembled from the topic's hand-written sentences so that it
  obeys the instruction; every demonstration is checked to score at least `MIN_DEMO_SCORE` with the
  `SimulatedLabeler`, and a prompt whose demonstration falls short is skipped.
- `comparison_prompts.jsonl`, `ppo_prompts.jsonl`, `eval_prompts.jsonl`: prompt-only rows `{"prompt": [...]}`
  from the same templates. No prompt text occurs in more than one file (SFT files included), and the topics of
  `eval_prompts.jsonl` (`N_HELDOUT_TOPICS` of them, drawn with the seed) never occur in any other file.
- `ptx_train.jsonl`, `ptx_eval.jsonl`: `{"text": ...}` rows of English prose (200-1200 characters) taken from the
  docstrings of the standard-library modules in `PTX_MODULES` and from the `help()` topics in `pydoc_data.topics`,
  for the PPO-ptx pretraining mix. Whole sources (a top-level package or one help topic) are held out for the eval
  split, so no eval paragraph shares a source with a train paragraph. The whole standard library holds too little
  prose for more than a few hundred kilobytes; `PTX_TRAIN_CHARS` only caps the train split.
- `README.md`: a description of every file, its row count, source, licence and the command that regenerates it.

The topic sentences and templates were written for this project (Apache-2.0); the docstring text is from the
Python standard library (PSF License).
"""

import argparse
import hashlib
import importlib
import inspect
import itertools
import json
import random
import re
import sys
import warnings
from pathlib import Path
from pydoc_data.topics import topics

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "src"))

from instructrl.labeler import SimulatedLabeler, words  # noqa: E402

SEED = 1234
DEFAULT_OUT = REPO_ROOT / "src" / "instructrl" / "data" / "default"

N_SFT_TRAIN = 600
N_SFT_EVAL = 60
N_COMPARISON = 400
N_PPO = 400
N_EVAL = 100
N_HELDOUT_TOPICS = 12
MIN_DEMO_SCORE = 0.85

PTX_TRAIN_CHARS = 1_500_000
PTX_EVAL_FRACTION = 0.1
PTX_MIN_CHARS = 200
PTX_MAX_CHARS = 1200

# Imperative tasks can be preceded by the length instruction ("In two sentences, describe ..."); questions cannot.
TASK_TEMPLATES = (
    "Describe {topic}",
    "Explain {topic}",
    "Tell me about {topic}",
    "Give a short description of {topic}",
    "Write a short explanation of {topic}",
    "Give an overview of {topic}",
    "Share some facts about {topic}",
    "Summarize what you know about {topic}",
    "Explain {topic} to a newcomer",
    "Describe {topic} in simple terms",
    "What should a beginner know about {topic}?",
    "What is worth knowing about {topic}?",
)

NUMBER_NAMES = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    10: "ten",
    12: "twelve",
    15: "fifteen",
    20: "twenty",
    25: "twenty-five",
    30: "thirty",
    40: "forty",
    50: "fifty",
}

# (kind, weight): how often each kind of length instruction is drawn. "none" keeps some prompts without any
# instruction so the model also sees the labeler's default length preference.
INSTRUCTION_KINDS = (("about", 0.3), ("max", 0.2), ("sentences", 0.2), ("bullets", 0.15), ("none", 0.15))
ABOUT_WORDS = (15, 20, 25, 30, 40, 50)
ABOUT_PHRASES = ("about {n} words", "around {n} words", "roughly {n} words", "approximately {n} words")
MAX_WORDS = (12, 15, 20, 25, 30)
MAX_PHRASES = ("at most {n} words", "no more than {n} words", "fewer than {n} words", "under {n} words")
SENTENCE_COUNTS = (1, 2, 3)
BULLET_COUNTS = (2, 3, 4)
ANSWER_LEADS = ("Answer", "Reply", "Respond", "Please answer")

# Standard-library modules whose docstrings feed the pretraining mix: pure-Python, present in every CPython build,
# importable without side effects, and not deprecated for removal, so that the list works on 3.10-3.13.
PTX_MODULES = (
    "abc argparse ast asyncio.base_events asyncio.events asyncio.futures asyncio.locks asyncio.queues "
    "asyncio.streams asyncio.tasks base64 bdb bisect calendar cmd code codecs codeop collections colorsys "
    "compileall concurrent.futures configparser contextlib copy copyreg csv dataclasses datetime decimal difflib "
    "dis doctest email.charset email.feedparser email.header email.message email.parser email.policy email.utils "
    "enum filecmp fileinput fnmatch fractions ftplib functools getopt gettext glob gzip hashlib heapq hmac "
    "html html.parser http.client http.cookiejar http.cookies http.server imaplib importlib importlib.abc "
    "importlib.metadata importlib.resources inspect io ipaddress json json.decoder json.encoder keyword linecache "
    "locale logging logging.config logging.handlers mailbox mimetypes modulefinder multiprocessing.connection "
    "multiprocessing.managers multiprocessing.pool multiprocessing.process multiprocessing.queues netrc numbers "
    "opcode operator optparse os pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath "
    "pprint profile pstats py_compile pyclbr pydoc queue quopri random re reprlib rlcompleter runpy sched secrets "
    "selectors shelve shlex shutil site smtplib socket socketserver stat statistics string struct subprocess "
    "symtable sysconfig tabnanny tarfile tempfile textwrap threading timeit token tokenize trace traceback types "
    "typing unittest.case unittest.loader unittest.mock unittest.result unittest.runner unittest.suite "
    "urllib.parse urllib.request urllib.response uuid warnings weakref wsgiref.handlers wsgiref.headers "
    "wsgiref.simple_server wsgiref.util xml.dom.minidom xml.etree.ElementTree xml.sax.handler xml.sax.saxutils "
    "xmlrpc.client xmlrpc.server zipapp zipfile zipimport "
    # Pure-Python twins and private helpers of the modules above carry much of the stdlib's prose.
    "_pydecimal _pyio _strptime asyncio.protocols asyncio.runners asyncio.sslproto asyncio.transports builtins "
    "concurrent.futures._base email._header_value_parser email._parseaddr email._policybase email.base64mime "
    "email.generator email.headerregistry email.quoprimime graphlib itertools marshal "
    "multiprocessing.shared_memory time xml.dom.domreg xml.sax._exceptions xml.sax.xmlreader"
).split()

# Everyday topics written for this project: the name as it appears in prompts, then short factual sentences. The
# first sentence names the topic and is short, so every demonstration mentions the topic and fits tight limits.
TOPICS = """
volcanoes
Volcanoes are openings in the crust where molten rock reaches the surface.
Deep underground, heat melts rock into a thick liquid called magma.
When pressure builds up, magma can burst out as lava, ash and gas.
Some volcanoes erupt often, while others stay quiet for thousands of years.
Volcanic ash can make the surrounding soil very rich for farming.
Scientists watch small earthquakes and gas levels to warn people before an eruption.

photosynthesis
Photosynthesis is how plants turn sunlight into chemical energy.
Leaves take in carbon dioxide from the air and water from the roots.
The green pigment chlorophyll captures the energy of light.
Plants use this energy to build sugars that feed their growth.
Oxygen is released as a by-product and fills the air we breathe.
Almost every food chain on land depends on this process.

bicycles
Bicycles are two-wheeled machines powered by the rider's legs.
Pushing the pedals turns a chain that drives the back wheel.
Gears let a rider climb steep hills or race along flat roads.
Cycling is cheap, quiet and produces no exhaust fumes.
Many cities build separate lanes to keep cyclists safe from cars.
Regular riding strengthens the heart, lungs and leg muscles.

tea
Tea is a drink made by soaking dried leaves in hot water.
The leaves come from a shrub first grown in southern China.
Green, black and oolong teas differ in how the leaves are processed.
Black tea is fully oxidised, which gives it a darker colour and stronger taste.
Tea contains caffeine, though usually less than a cup of coffee.
People in many countries share tea as a sign of welcome.

the moon
The moon is the natural satellite that orbits the Earth.
It takes about a month to travel once around our planet.
The moon has no light of its own and reflects sunlight instead.
Its gravity pulls on the oceans and causes the tides.
Dark plains on its surface are old lava fields from ancient eruptions.
Astronauts first walked on the moon in the summer of 1969.

recycling
Recycling turns used materials into new products.
Paper, glass, metal and many plastics can be collected and processed again.
Recycling saves raw materials and uses less energy than making things from scratch.
It also keeps waste out of landfills and incinerators.
Items must usually be clean and sorted to be recycled well.
Buying products made from recycled material helps keep the system working.

honey bees
Honey bees are social insects that live together in large colonies.
Each colony has one queen, thousands of female workers and some male drones.
Workers collect nectar and pollen from flowers to feed the hive.
They turn nectar into honey by adding enzymes and drying it in wax cells.
While moving between flowers, bees pollinate many of the crops we eat.
Bees share the location of food with a special waggle dance.

rainbows
Rainbows appear when sunlight shines through drops of rain.
Each drop bends the light and splits it into separate colours.
The colours always appear in the same order, from red to violet.
You can only see a rainbow when the sun is behind you.
Sometimes a fainter second rainbow forms with its colours reversed.
A garden hose on a sunny day can make a small rainbow too.

the heart
The heart is a muscle that pumps blood around the body.
It has four chambers, two upper atria and two lower ventricles.
The right side sends blood to the lungs to pick up oxygen.
The left side pushes oxygen-rich blood out to every organ.
An adult heart beats roughly seventy times a minute at rest.
Exercise, sleep and a balanced diet help keep the heart healthy.

glaciers
Glaciers are huge masses of ice that move slowly over land.
They form where more snow falls each winter than melts each summer.
Over many years the snow is pressed into dense blue ice.
As glaciers slide downhill, they carve deep valleys and carry rocks along.
Many rivers are fed by meltwater from mountain glaciers.
Most glaciers around the world are shrinking as the climate warms.

coffee
Coffee is a drink brewed from the roasted seeds of the coffee plant.
The seeds, called beans, grow inside small red fruits known as cherries.
Roasting turns the green beans brown and creates their rich aroma.
Coffee contains caffeine, which helps many people feel more alert.
Brazil grows more coffee than any other country.
Espresso, filter coffee and cold brew are made with different methods.

the internet
The internet is a global network that links billions of computers.
Data travels across it in small packets that find their own routes.
Shared rules called protocols let different machines understand each other.
The web, email and video calls are services that run on the internet.
Undersea cables carry most of the traffic between continents.
The network grew from research projects in the late twentieth century.

earthquakes
Earthquakes are sudden shaking of the ground caused by moving rock.
The crust is broken into plates that slowly push against each other.
When stress builds up along a fault, the rock slips and releases energy.
That energy spreads outward as seismic waves.
Seismometers record the waves so scientists can measure each quake.
Strong buildings and early warnings help protect people in risky regions.

rain forests
Rain forests are dense forests that receive heavy rain all year.
They cover a small part of the land but hold over half of all species.
Tall trees form a canopy that blocks most sunlight from the ground.
Many medicines have been developed from plants found in these forests.
Rain forests store huge amounts of carbon in their trees and soil.
Logging and farming have cleared large areas of them.

bread
Bread is a staple food made from flour, water and usually yeast.
Kneading the dough develops gluten, which makes it stretchy.
Yeast feeds on sugars and releases gas that makes the dough rise.
Baking sets the structure and browns the crust.
Flatbreads like tortillas are made without any rising at all.
People have baked bread for many thousands of years.

the water cycle
The water cycle is the constant movement of water around the Earth.
Heat from the sun evaporates water from oceans, lakes and soil.
The vapour rises, cools and condenses into clouds.
Water falls back to the ground as rain, snow or hail.
It then flows through rivers or soaks into the ground.
Eventually the water returns to the sea and the cycle begins again.

chess
Chess is a strategy board game played by two people.
Each player starts with sixteen pieces on a board of sixty-four squares.
The pieces move in different ways, and the queen is the most powerful.
The goal is to trap the opponent's king so that it cannot escape.
This winning position is called checkmate.
Chess has been played for well over a thousand years.

sleep
Sleep is a natural state of rest for the body and mind.
During sleep the brain sorts memories and clears away waste.
Adults usually need seven to nine hours each night.
Sleep moves through cycles of light, deep and dreaming stages.
Too little sleep harms mood, focus and the immune system.
A regular bedtime and a dark, quiet room help people sleep well.

the sun
The sun is the star at the centre of our solar system.
It is a huge ball of hot gas, mostly hydrogen and helium.
In its core, nuclear fusion turns hydrogen into helium and releases energy.
Sunlight takes about eight minutes to reach the Earth.
The sun's heat drives our weather and allows life to exist.
It is around four and a half billion years old.

electricity
Electricity is the flow of electric charge through a material.
In wires, tiny particles called electrons carry the charge.
Metals such as copper conduct electricity well, while rubber does not.
Power stations generate electricity from fuel, wind, water or sunlight.
It powers lights, motors, heaters and computers.
Touching live wires is dangerous, so cables are wrapped in insulation.

the printing press
The printing press is a machine that presses ink onto paper.
Johannes Gutenberg built an influential version in Germany around 1440.
It used movable metal letters that could be arranged and reused.
Books became far cheaper and faster to produce.
Ideas and news spread across Europe much more quickly.
Many historians see it as one of the most important inventions.

dolphins
Dolphins are intelligent marine mammals related to whales.
They breathe air through a blowhole on top of their heads.
Dolphins live in groups called pods and cooperate while hunting.
They use clicks and whistles to communicate with each other.
Echolocation lets them find fish by listening to returning echoes.
Most dolphins live in warm and temperate seas.

composting
Composting turns food scraps and garden waste into rich soil.
Microbes, worms and fungi break the material down over time.
A good heap mixes green waste like peelings with brown waste like dry leaves.
Turning the pile adds air and speeds up the process.
Finished compost is dark, crumbly and smells like the forest floor.
It feeds plants and reduces the waste sent to landfill.

vaccines
Vaccines train the immune system to recognise a disease.
They contain a harmless piece or weakened form of a germ.
The body responds by making antibodies and memory cells.
If the real germ appears later, the body can fight it off quickly.
Vaccination has wiped out smallpox and made polio very rare.
When many people are vaccinated, even those who are not get some protection.

owls
Owls are birds of prey that mostly hunt at night.
Their large eyes face forward and see well in dim light.
Soft feathers let them fly almost without a sound.
Owls can turn their heads much further than humans can.
They swallow small prey whole and later cough up pellets of bone and fur.
Their hearing is sharp enough to find mice moving under snow.

the piano
The piano is a musical instrument played with a keyboard.
Pressing a key makes a felt hammer strike tightened steel strings.
A standard piano has eighty-eight black and white keys.
Pedals let the player sustain notes or make them softer.
It was invented in Italy around the year 1700.
The piano can play melody and harmony at the same time.

deserts
Deserts are regions that receive very little rain.
Some deserts are hot and sandy, while others are cold and rocky.
Temperatures can swing sharply between day and night.
Plants such as cacti store water in thick stems.
Many desert animals rest in burrows during the heat of the day.
The largest hot desert in the world is the Sahara.

trains
Trains are vehicles that run on rails and carry people or goods.
Early trains were pulled by steam locomotives burning coal.
Today most trains run on diesel engines or electricity.
Steel wheels on steel rails waste little energy to friction.
High-speed trains can travel faster than three hundred kilometres an hour.
One freight train can replace hundreds of lorries on the road.

the immune system
The immune system is the body's defence against infection.
White blood cells patrol the blood and tissues looking for invaders.
Antibodies attach to germs and mark them for destruction.
Fever and swelling are signs that the immune system is at work.
Some immune cells remember past infections for many years.
Sleep, exercise and good food help the immune system stay strong.

clouds
Clouds are masses of tiny water droplets or ice crystals in the air.
They form when warm, moist air rises and cools.
Fluffy cumulus clouds often appear on fair summer days.
Thin, wispy cirrus clouds float high up and are made of ice.
Dark, towering clouds can bring thunderstorms and heavy rain.
Clouds reflect sunlight and help control the temperature of the planet.

cheese
Cheese is a food made from the milk of cows, goats or sheep.
An enzyme called rennet makes the milk separate into curds and whey.
The curds are pressed, salted and often left to age.
Ageing allows flavours to develop, from mild to very sharp.
Some cheeses ripen with mould, which gives them blue veins or soft rinds.
There are thousands of kinds of cheese around the world.

the library
The library is a place where people can borrow books for free.
Libraries also lend films, music and digital books.
Librarians help visitors find reliable information.
Many libraries offer computers and internet access to the public.
Reading groups and children's story times bring communities together.
Public libraries are usually funded by local taxes.

wind power
Wind power is electricity made from moving air.
Turbines have large blades that spin when the wind blows.
The spinning shaft drives a generator inside the tower.
Wind farms are often built on hills or out at sea where winds are strong.
Wind power produces no smoke or greenhouse gases while running.
Because the wind varies, it is paired with storage or other sources.

the Olympic Games
The Olympic Games are an international sports festival held every four years.
They began in ancient Greece in honour of the god Zeus.
The modern games were revived in 1896 in Athens.
Athletes from over two hundred nations compete for gold, silver and bronze medals.
There are separate summer and winter games.
The Olympic flame is carried in a relay before the opening ceremony.

octopuses
Octopuses are soft-bodied sea animals with eight arms.
Each arm is lined with suckers that can taste what they touch.
Octopuses can change colour and texture to hide from predators.
They are clever and can solve puzzles and open jars.
An octopus has three hearts and blue blood.
When threatened, it can squirt a cloud of dark ink and escape.

yoga
Yoga is a practice that combines postures, breathing and focus.
It began in ancient India as part of spiritual training.
Regular practice improves flexibility, balance and strength.
Slow breathing in yoga can help calm the mind and reduce stress.
Classes range from gentle stretching to demanding, fast sequences.
People of almost any age can begin with simple poses.

the telephone
The telephone is a device for talking with people far away.
It turns the sound of a voice into electrical signals.
Alexander Graham Bell received a patent for it in 1876.
Early calls were connected by operators at switchboards.
Mobile phones later freed callers from wires altogether.
Modern smartphones combine the telephone with a small computer.

tides
Tides are the regular rise and fall of the sea.
They are caused mainly by the pull of the moon's gravity.
Most coasts see two high tides and two low tides each day.
The sun also affects tides, especially at full and new moon.
Tidal ranges are greatest in narrow bays and estuaries.
Many shore creatures are adapted to being covered and uncovered by water.

maps
Maps are drawings that show places and how they relate to each other.
A scale tells readers how distances on the map match real distances.
Symbols and colours stand for roads, rivers, forests and towns.
Contour lines on some maps show the height and shape of the land.
No flat map can show the round Earth without some distortion.
Digital maps on phones can update traffic and routes in real time.

penguins
Penguins are flightless seabirds that live mostly in the southern hemisphere.
Their wings have become stiff flippers for swimming.
Penguins can dive deep to catch fish, squid and krill.
A thick layer of fat and tightly packed feathers keeps them warm.
Emperor penguins huddle together to survive the Antarctic winter.
Many penguin species nest in large, noisy colonies.

gardening
Gardening is the practice of growing plants for food or beauty.
Good soil, sunlight and water are the basics every plant needs.
Gardeners add compost to feed the soil and keep it healthy.
Weeding stops unwanted plants from stealing light and nutrients.
Vegetables such as tomatoes and beans grow well in small plots.
Many people find that gardening lowers stress and keeps them active.

the Roman Empire
The Roman Empire was one of the largest empires of the ancient world.
It was ruled from the city of Rome in what is now Italy.
At its height it stretched from Britain to the Middle East.
The Romans built roads, aqueducts and cities that still stand today.
Latin, their language, shaped many modern European languages.
The western half of the empire fell in the fifth century.

batteries
Batteries are devices that store energy in chemical form.
Inside, chemical reactions move electrons from one terminal to the other.
This flow provides electric current to phones, cars and torches.
Rechargeable batteries can reverse the reaction when plugged in.
Lithium-ion batteries are light and hold a lot of energy.
Old batteries should be recycled because they contain harmful metals.

mushrooms
Mushrooms are the fruiting bodies of certain fungi.
Most of the fungus lives hidden underground as a web of threads.
Mushrooms release tiny spores that spread to start new fungi.
Fungi break down dead wood and leaves and return nutrients to the soil.
Some mushrooms are tasty to eat, but others are deadly poisonous.
Wild mushrooms should never be eaten unless an expert has identified them.

the eye
The eye is the organ that lets us see.
Light enters through the clear cornea and passes through the pupil.
The lens focuses the light onto the retina at the back of the eye.
Cells in the retina turn the light into nerve signals.
The brain interprets these signals as images.
Glasses or contact lenses correct eyes that focus poorly.

hurricanes
Hurricanes are powerful storms that form over warm ocean water.
They spin around a calm centre called the eye.
Winds in a strong hurricane can exceed two hundred kilometres an hour.
Heavy rain and storm surges often cause serious flooding along coasts.
In other regions the same storms are called typhoons or cyclones.
Forecasters track them with satellites to give people time to prepare.

money
Money is anything people widely accept in exchange for goods and services.
Before money, people traded goods directly through barter.
Coins made from precious metals were among the first forms of money.
Today most money exists as numbers in bank accounts.
Money lets people compare prices and save value for later.
Central banks manage how much money is in circulation.

the skeleton
The skeleton is the framework of bones that supports the body.
An adult human skeleton has two hundred and six bones.
It protects soft organs, such as the skull guarding the brain.
Muscles attach to bones and pull on them to create movement.
Bone marrow inside some bones makes new blood cells.
Calcium and exercise help keep bones strong.

elephants
Elephants are the largest land animals alive today.
They use their long trunks to breathe, smell, drink and grab food.
Their tusks are large teeth used for digging and lifting.
Elephants live in family herds led by an older female.
They eat huge amounts of grass, bark and fruit every day.
Poaching for ivory has put many elephants at risk.

soap
Soap is a cleaning product made from fats or oils and an alkali.
Soap molecules have one end that loves water and one end that loves grease.
They surround dirt and oil so it can be rinsed away.
Washing hands with soap removes many germs that cause illness.
People have made simple soaps for thousands of years.
Liquid soap and solid bars work in the same basic way.

the brain
The brain is the organ that controls thought, memory and movement.
It contains billions of nerve cells called neurons.
Neurons send electrical and chemical signals to each other.
Different areas of the brain handle vision, language and balance.
The brain uses about a fifth of the body's energy.
Learning new skills builds new connections between neurons.

salt
Salt is a mineral made mainly of sodium chloride.
It is produced by evaporating seawater or by mining rock salt.
Salt brings out flavour and has long been used to preserve food.
The body needs a little salt to keep nerves and muscles working.
Eating too much salt can raise blood pressure.
In the past, salt was so valuable that it was traded like money.

sharks
Sharks are fish with skeletons made of cartilage instead of bone.
They have lived in the oceans for hundreds of millions of years.
Many sharks have several rows of teeth that are replaced throughout life.
Sharks can sense the tiny electric fields of other animals.
Most sharks are not dangerous to people.
Overfishing has made many shark species rare.

kites
Kites are light frames covered with fabric or paper that fly on the wind.
A line held by the flyer keeps the kite at an angle to the wind.
The wind pushes against the kite and creates lift.
Kites were first flown in China more than two thousand years ago.
They have been used for fun, for science and for sending signals.
Kite festivals fill the sky with colourful shapes.

the microscope
The microscope is an instrument that makes tiny objects look larger.
Light microscopes use glass lenses to magnify a sample.
Electron microscopes use beams of electrons to see even smaller details.
Microscopes revealed cells, bacteria and the structure of tissues.
Scientists often stain samples to make their parts easier to see.
Doctors use microscopes to examine blood and diagnose disease.

snow
Snow is frozen water that falls from clouds as ice crystals.
Snowflakes form when water vapour freezes around tiny specks of dust.
Most snowflakes have six sides because of the way ice crystals grow.
Fresh snow is mostly air, which makes it a good insulator.
Snow that builds up on mountains feeds rivers when it melts in spring.
Heavy snow can close roads and bring down power lines.

the stock market
The stock market is where people buy and sell shares in companies.
A share is a small part of ownership in a business.
Share prices rise and fall with supply, demand and company news.
Companies sell shares to raise money for growth.
Investors hope to earn money from rising prices and dividends.
Spreading money across many companies lowers the risk of big losses.

butterflies
Butterflies are insects with large, often colourful wings.
They begin life as eggs that hatch into caterpillars.
A caterpillar eats leaves and then forms a chrysalis.
Inside the chrysalis it changes into an adult butterfly.
Butterflies drink nectar through a long, coiled tongue.
Some, like the monarch, migrate thousands of kilometres each year.

the compass
The compass is a tool that shows the direction of north.
Its magnetic needle lines up with the Earth's magnetic field.
Sailors used compasses to cross oceans out of sight of land.
The earliest compasses were made in China.
A map and compass together let hikers find their way.
Phones now include digital compasses built from tiny sensors.

rice
Rice is the seed of a grass that feeds more than half the world.
It is usually grown in flooded fields called paddies.
Asia produces and eats most of the rice on Earth.
Brown rice keeps its outer bran, while white rice has it removed.
Rice can be boiled, steamed or ground into flour and noodles.
Growing rice needs a great deal of water and careful work.

the ocean
The ocean covers about seventy percent of the Earth's surface.
It holds most of the planet's water and is salty.
Ocean currents move heat around the globe and shape the climate.
Tiny ocean plants called phytoplankton produce much of the oxygen we breathe.
The deepest parts of the ocean lie more than ten kilometres down.
Pollution and overfishing threaten many ocean ecosystems.

bridges
Bridges are structures that carry roads or paths over obstacles.
Beam bridges rest on supports at each end.
Arch bridges push their weight outward into strong foundations.
Suspension bridges hang the deck from cables strung between tall towers.
Engineers design bridges to handle wind, traffic and temperature changes.
Some ancient stone bridges are still in use today.

frogs
Frogs are amphibians that live both in water and on land.
They start life as eggs laid in water that hatch into tadpoles.
Tadpoles breathe with gills and slowly grow legs.
Adult frogs breathe with lungs and also through their skin.
Frogs catch insects with a quick, sticky tongue.
Because their skin absorbs chemicals, frogs are sensitive to pollution.

the calendar
The calendar is a system for organising days into weeks, months and years.
Most of the world uses the Gregorian calendar.
A year is based on the time the Earth takes to circle the sun.
Leap years add an extra day to keep the calendar in step with the seasons.
Some calendars follow the phases of the moon instead.
Calendars help people plan farming, festivals and daily life.

chocolate
Chocolate is a sweet food made from the seeds of the cacao tree.
Cacao trees grow in hot, humid regions near the equator.
The seeds are fermented, dried and roasted before grinding.
Dark chocolate has more cacao and less sugar than milk chocolate.
The ancient Maya and Aztecs drank chocolate as a bitter drink.
Chocolate contains small amounts of caffeine.

the camera
The camera is a device that records images using light.
Light passes through a lens and falls on film or a digital sensor.
The shutter opens briefly to control how long the light enters.
The aperture changes size to let in more or less light.
Early photographs needed minutes of exposure to capture a scene.
Today almost every mobile phone contains a small camera.

forests
Forests are large areas covered mainly by trees.
They provide homes for countless animals, plants and fungi.
Trees take in carbon dioxide and release oxygen.
Forest roots hold soil in place and help prevent floods.
People rely on forests for wood, food and medicine.
Planting trees and protecting old forests help fight climate change.

bats
Bats are the only mammals capable of true flight.
Their wings are thin skin stretched between long finger bones.
Many bats hunt insects at night using echolocation.
Fruit bats feed on fruit and help spread seeds.
Bats rest upside down in caves, trees and buildings.
A single bat can eat thousands of insects in one night.

the alphabet
The alphabet is a set of letters used to write a language.
Each letter stands for one or more sounds.
The English alphabet has twenty-six letters.
Early alphabets developed in the ancient Middle East.
The Greeks added letters for vowel sounds.
Learning the alphabet is usually the first step in learning to read.

lighthouses
Lighthouses are towers with bright lights that guide ships at night.
They warn sailors about rocks, reefs and dangerous coasts.
Each lighthouse flashes its own pattern so sailors can identify it.
Special lenses focus the light into a strong beam.
Keepers once lived in lighthouses to tend the lamps.
Today most lighthouses run automatically.

the solar system
The solar system is the sun and everything that orbits it.
It includes eight planets, their moons, asteroids and comets.
The four inner planets are small and rocky.
The four outer planets are giants made mostly of gas and ice.
Jupiter is the largest planet in the solar system.
It formed from a spinning cloud of gas and dust billions of years ago.

spiders
Spiders are eight-legged animals that belong to the arachnid group.
Most spiders spin silk to build webs or line their burrows.
Spider silk is light, stretchy and remarkably strong.
Spiders catch insects and help control pest numbers.
Most spiders have venom, but very few can harm people.
Many spiders have eight eyes, though their eyesight varies.

the violin
The violin is a small string instrument played with a bow.
It has four strings tuned a fifth apart.
The bow is strung with horsehair that makes the strings vibrate.
The hollow wooden body makes the sound louder and richer.
Violins play an important part in orchestras and folk music.
Famous violins made in Italy centuries ago are still played today.

fire
Fire is a chemical reaction that gives off heat and light.
It needs fuel, oxygen and heat to keep burning.
Removing any one of these three things puts the fire out.
Learning to control fire changed how early humans cooked and stayed warm.
Wildfires can spread fast in dry, windy weather.
Smoke alarms give people an early warning of fire at home.

beeswax candles
Beeswax candles are candles made from the wax that honey bees produce.
Worker bees make the wax to build the cells of their comb.
Beekeepers melt down old comb and filter the wax.
The wax is poured into moulds or built up by dipping wicks.
These candles burn slowly and give off a faint honey scent.
People have lit such candles for thousands of years.

pottery
Pottery is the craft of shaping clay into useful and decorative objects.
Potters shape clay by hand or on a spinning wheel.
The pieces are dried and then fired in a very hot kiln.
Firing hardens the clay so it can hold water.
A glassy coating called glaze adds colour and seals the surface.
Broken pottery helps archaeologists learn about ancient cultures.

the post office
The post office is a service that delivers letters and parcels.
People buy stamps to pay for sending their mail.
Mail is sorted by address and sent on by road, rail or air.
Postal workers deliver to homes and businesses almost every day.
Many post offices also offer banking and other public services.
Postal systems existed in ancient Persia and Rome.

windmills
Windmills are machines that use the wind to do work.
Their sails turn a shaft that drives machinery inside.
For centuries they ground grain into flour.
In the Netherlands, windmills pumped water to drain low land.
Modern wind turbines developed from these older designs.
Some historic windmills are still kept working as museums.

hibernation
Hibernation is a long, deep rest that some animals take in winter.
Their heart rate, breathing and body temperature drop sharply.
This saves energy when food is scarce and the weather is cold.
Animals eat extra food in autumn to build up fat reserves.
Hedgehogs, bats and some ground squirrels are true hibernators.
Bears sleep through winter but wake more easily than true hibernators.

lightning
Lightning is a giant spark of electricity in the sky.
It forms when electric charges build up inside storm clouds.
A bolt of lightning is hotter than the surface of the sun.
The rapid heating of the air creates the sound of thunder.
Light travels faster than sound, so we see the flash first.
During a storm, the safest place is indoors, away from open water.

the bicycle helmet
The bicycle helmet is a hard hat that protects a cyclist's head.
A foam liner absorbs the force of a crash.
A hard outer shell spreads the impact and slides on the road.
The helmet should sit level and fit snugly under a buckled strap.
Wearing a helmet greatly lowers the risk of serious head injury.
A helmet should be replaced after any hard crash.

democracy
Democracy is a system of government in which citizens hold power.
People usually vote to choose leaders who represent them.
Free and fair elections are a key part of democracy.
Democracies protect rights such as free speech and a free press.
Courts and laws limit what elected leaders can do.
The idea traces back to ancient Athens.

wool
Wool is a fibre that grows as the fleece of sheep.
Farmers shear the sheep once a year, usually in spring.
The wool is cleaned, combed and spun into yarn.
Wool keeps people warm even when it gets damp.
It is used for sweaters, blankets, carpets and felt.
Other animals, such as alpacas and goats, also give useful wool.

the kidneys
The kidneys are two bean-shaped organs that clean the blood.
They sit near the back of the body, below the ribs.
The kidneys filter waste and extra water out of the blood.
This waste leaves the body as urine.
They also help control blood pressure and the balance of salts.
Drinking enough water helps the kidneys work well.

paper
Paper is a thin material made from plant fibres.
It was first made in China nearly two thousand years ago.
Today most paper comes from wood pulp.
The pulp is spread on screens, pressed and dried into sheets.
Paper is used for writing, printing, packaging and cleaning.
Recycling paper saves trees, water and energy.

the wheel
The wheel is a round object that turns on an axle.
It was invented more than five thousand years ago.
Early wheels were solid discs cut from wood.
Spoked wheels were lighter and allowed faster chariots.
Wheels reduce friction and make it easier to move heavy loads.
Gears, pulleys and turbines are all based on the wheel.

cactuses
Cactuses are plants adapted to very dry places.
They store water in thick, fleshy stems.
Their spines are changed leaves that protect them and reduce water loss.
Cactuses open their pores at night to save water.
Many cactuses grow bright flowers after rain.
Almost all cactuses come from the Americas.

yoghurt
Yoghurt is a food made by fermenting milk with bacteria.
The bacteria turn milk sugar into lactic acid.
This acid thickens the milk and gives yoghurt its sour taste.
Yoghurt contains protein, calcium and live bacteria.
Some people who cannot digest milk can eat yoghurt more easily.
It can be eaten plain or mixed with fruit and honey.

the human skin
The human skin is the largest organ of the body.
It forms a barrier that keeps germs and water out.
Sweat glands in the skin help cool the body.
Nerves in the skin sense touch, heat and pain.
The skin makes vitamin D when exposed to sunlight.
Sunscreen protects the skin from damage by ultraviolet rays.

sailing
Sailing is travelling across water in a boat moved by the wind.
Sails catch the wind and turn it into forward motion.
A rudder at the back steers the boat.
Sailors can move against the wind by zigzagging in a process called tacking.
For centuries, sailing ships carried trade across the oceans.
Today sailing is a popular sport and hobby.

ants
Ants are social insects that live in organised colonies.
A colony can hold millions of ants and one or more queens.
Worker ants gather food, care for the young and defend the nest.
Ants leave scent trails to guide others to food.
Some ants farm fungus or tend aphids for their sweet honeydew.
Ants can carry many times their own body weight.

the refrigerator
The refrigerator is an appliance that keeps food cold.
It moves heat from inside the box to the air outside.
A fluid called a refrigerant absorbs heat as it evaporates.
A compressor then squeezes the fluid so it releases the heat at the back.
Cold temperatures slow the growth of bacteria that spoil food.
Before refrigerators, people used ice boxes and cold cellars.

tornadoes
Tornadoes are spinning columns of air that reach from a storm to the ground.
They form in powerful thunderstorms with changing winds.
Tornado winds can be the fastest on Earth.
Most tornadoes last only a few minutes.
They are especially common in the central United States.
Sirens and radio alerts warn people to take shelter.

whales
Whales are huge marine mammals that breathe air.
The blue whale is the largest animal that has ever lived.
Baleen whales filter small creatures like krill from the water.
Toothed whales, such as sperm whales, hunt squid and fish.
Humpback whales sing long, complex songs.
Many whales migrate between feeding and breeding waters each year.

the guitar
The guitar is a string instrument usually played by plucking or strumming.
Most guitars have six strings.
Pressing strings against metal frets changes the pitch of each note.
Acoustic guitars use a hollow body to project sound.
Electric guitars use pickups and an amplifier.
The guitar is central to many styles, from folk to rock.

the thermometer
The thermometer is an instrument that measures temperature.
Older thermometers used mercury or coloured alcohol in a glass tube.
The liquid expands and rises as it warms.
Digital thermometers use electronic sensors instead.
Doctors use thermometers to check for fever.
Temperatures are usually measured in degrees Celsius or Fahrenheit.
"""


def parse_topics(text: str = TOPICS) -> dict[str, list[str]]:
    """Parses the `TOPICS` table: blocks separated by a blank line, the topic's name first, then its sentences."""
    topics = {}
    for block in text.strip().split("\n\n"):
        name, *sentences = [line.strip() for line in block.strip().splitlines()]
        if name in topics:
            raise ValueError(f"Duplicate topic {name!r} in TOPICS.")
        topics[name] = sentences
    return topics


def _number(rng: random.Random, n: int) -> str:
    """Word counts are written as digits or words at random, so the model sees both spellings."""
    return NUMBER_NAMES[n] if n in NUMBER_NAMES and rng.random() < 0.5 else str(n)


def make_instruction(rng: random.Random) -> tuple[str, int, str]:
    """Draws a length instruction: `(kind, n, phrase)`, e.g. `("about", 20, "in about 20 words")`."""
    kind = rng.choices([k for k, _ in INSTRUCTION_KINDS], weights=[w for _, w in INSTRUCTION_KINDS])[0]
    if kind == "about":
        n = rng.choice(ABOUT_WORDS)
        return kind, n, "in " + rng.choice(ABOUT_PHRASES).format(n=_number(rng, n))
    if kind == "max":
        n = rng.choice(MAX_WORDS)
        phrase = rng.choice(MAX_PHRASES)
        # "fewer than 20 words" allows at most 19, which is what the labeler enforces.
        limit = n - 1 if phrase.startswith(("fewer", "under")) else n
        return kind, limit, "in " + phrase.format(n=_number(rng, n))
    if kind == "sentences":
        n = rng.choice(SENTENCE_COUNTS)
        count = rng.choice(["one", "a single"]) if n == 1 else NUMBER_NAMES[n]
        return kind, n, f"{rng.choice(['in', 'using'])} {count} sentence{'s' if n > 1 else ''}"
    if kind == "bullets":
        n = rng.choice(BULLET_COUNTS)
        return kind, n, f"{rng.choice(['in', 'as', 'using'])} {NUMBER_NAMES[n]} bullet points"
    return kind, 0, ""


def make_prompt(rng: random.Random, topic: str) -> tuple[str, tuple[str, int]]:
    """Builds a user prompt for `topic`; returns it with the `(kind, n)` of its length instruction."""
    task = rng.choice(TASK_TEMPLATES).format(topic=topic)
    kind, n, phrase = make_instruction(rng)
    is_question = task.endswith("?")
    if not phrase:
        prompt = task if is_question else task + "."
    else:
        placement = "separate" if is_question else rng.choice(["after", "after", "before", "separate"])
        if placement == "after":
            prompt = f"{task} {phrase}."
        elif placement == "before":
            prompt = f"{phrase[0].upper()}{phrase[1:]}, {task[0].lower()}{task[1:]}."
        else:
            prompt = f"{task if is_question else task + '.'} {rng.choice(ANSWER_LEADS)} {phrase}."
    return prompt, (kind, n)


def _n_words(sentences: list[str]) -> int:
    return sum(len(words(s)) for s in sentences)


def make_demo(rng: random.Random, spec: tuple[str, int], sentences: list[str]) -> str | None:
    """Assembles a response from a topic's sentences that obeys the length instruction `spec`, or `None`.

    The first sentence names the topic, so it is always kept; the others are chosen to fit the instruction.
    """
    kind, n = spec
    first, rest = sentences[0], sentences[1:]
    if kind in ("about", "max"):
        subsets = [[first, *combo] for r in range(len(rest) + 1) for combo in itertools.combinations(rest, r)]
        if kind == "about":
            best = min(subsets, key=lambda s: (abs(_n_words(s) - n), len(s)))
        else:
            fitting = [s for s in subsets if _n_words(s) <= n]
            if not fitting:
                return None
            best = max(fitting, key=lambda s: _n_words(s))
        return " ".join(best)
    count = {"sentences": n, "bullets": n, "none": 3}[kind]
    if count > len(sentences):
        return None
    # Keep the original order of the sampled sentences: they were written to read in that order.
    chosen = [first] + [rest[i] for i in sorted(rng.sample(range(len(rest)), count - 1))]
    if kind == "bullets":
        return "\n".join(f"- {s}" for s in chosen)
    return " ".join(chosen)


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def make_prompt_splits(seed: int) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Builds the SFT demonstrations and the prompt-only splits; returns them and some counts for the README."""
    topics = parse_topics()
    names = sorted(topics)
    heldout = set(random.Random(f"{seed}-heldout").sample(names, N_HELDOUT_TOPICS))
    train_topics = [t for t in names if t not in heldout]
    labeler = SimulatedLabeler()
    seen: set[str] = set()
    stats = {"dropped_demos": 0, "n_topics": len(names), "n_heldout_topics": len(heldout)}

    def draw(name: str, n_rows: int, pool: list[str], with_demo: bool) -> list[dict]:
        rng = random.Random(f"{seed}-{name}")
        rows: list[dict] = []
        for _ in range(200 * n_rows):
            if len(rows) == n_rows:
                break
            topic = rng.choice(pool)
            prompt, spec = make_prompt(rng, topic)
            if prompt in seen:
                continue
            row = {"prompt": _user(prompt)}
            if with_demo:
                demo = make_demo(rng, spec, topics[topic])
                if demo is None or labeler.score(prompt, demo) < MIN_DEMO_SCORE:
                    stats["dropped_demos"] += 1
                    continue
                row["completion"] = [{"role": "assistant", "content": demo}]
            seen.add(prompt)
            rows.append(row)
        if len(rows) < n_rows:
            raise RuntimeError(f"Could only build {len(rows)} of {n_rows} unique prompts for {name}.")
        return rows

    splits = {
        "sft_train": draw("sft_train", N_SFT_TRAIN, train_topics, with_demo=True),
        "sft_eval": draw("sft_eval", N_SFT_EVAL, train_topics, with_demo=True),
        "comparison_prompts": draw("comparison_prompts", N_COMPARISON, train_topics, with_demo=False),
        "ppo_prompts": draw("ppo_prompts", N_PPO, train_topics, with_demo=False),
        "eval_prompts": draw("eval_prompts", N_EVAL, sorted(heldout), with_demo=False),
    }
    stats["heldout_topics"] = sorted(heldout)  # type: ignore[assignment]
    return splits, stats


_CODE_CHARS = set("=_[]{}<>`|\\#@$%^~*/")
_NOT_PROSE_RE = re.compile(r">>>|::|\.\.\.|https?:|\w\.\w+\(")
_SENTENCE_END_RE = re.compile(r"(?<=[a-z][.!?])\s+(?=[A-Z])")


def _is_prose(lines: list[str]) -> bool:
    """Heuristic for a paragraph of English prose rather than code, a table or a parameter list."""
    if any(line[:1].isspace() for line in lines):
        return False
    text = " ".join(line.strip() for line in lines)
    if len(text) < 40 or not text[0].isupper() or not text.endswith(".") or _NOT_PROSE_RE.search(text):
        return False
    if sum(c in _CODE_CHARS for c in text) > 0.015 * len(text):
        return False
    if sum(c.isalpha() or c == " " for c in text) < 0.9 * len(text):
        return False
    tokens = text.split()
    plain = sum(1 for t in tokens if t.strip(".,;:!?'\"()-").isalpha() and t.strip(".,;:!?'\"()-").islower())
    return len(tokens) >= 8 and plain >= 0.7 * len(tokens)


def _split_long(text: str) -> list[str]:
    """Splits a paragraph longer than `PTX_MAX_CHARS` at sentence ends into pieces that fit."""
    if len(text) <= PTX_MAX_CHARS:
        return [text]
    pieces, current = [], ""
    for sentence in _SENTENCE_END_RE.split(text):
        if current and len(current) + 1 + len(sentence) > PTX_MAX_CHARS:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    return [*pieces, current]


def _docstrings(module: object) -> list[str]:
    """The module's docstring, then those of its own classes, functions and methods, in sorted name order."""
    docs = [module.__doc__]
    for _, obj in sorted(vars(module).items()):
        if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != module.__name__:
            continue
        docs.append(obj.__doc__)
        if inspect.isclass(obj):
            for _, member in sorted(vars(obj).items()):
                member = getattr(member, "__func__", member)
                if inspect.isfunction(member) or isinstance(member, property):
                    docs.append(member.__doc__)
    return [inspect.cleandoc(d) for d in docs if isinstance(d, str)]


def prose_chunks(doc: str) -> list[str]:
    """Joins consecutive prose paragraphs of a docstring into chunks of `PTX_MIN_CHARS`-`PTX_MAX_CHARS` chars."""
    chunks, current = [], ""
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or not _is_prose(lines):
            if len(current) >= PTX_MIN_CHARS:
                chunks.append(current)
            current = ""
            continue
        for text in _split_long(" ".join(line.strip() for line in lines)):
            if current and len(current) + 1 + len(text) <= PTX_MAX_CHARS and len(current) < PTX_MIN_CHARS:
                current = f"{current} {text}"
            else:
                if len(current) >= PTX_MIN_CHARS:
                    chunks.append(current)
                current = text
    if len(current) >= PTX_MIN_CHARS:
        chunks.append(current)
    return [c for c in chunks if PTX_MIN_CHARS <= len(c) <= PTX_MAX_CHARS]


def make_ptx(seed: int) -> tuple[list[dict], list[dict], list[str]]:
    """Builds the pretraining-mix corpus; returns train rows, eval rows and the held-out top-level modules."""
    sources: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module_name in PTX_MODULES:
            module = importlib.import_module(module_name)
            # Submodules of one package share a group so that the eval split shares no package with train.
            sources += [(module_name.split(".")[0], doc) for doc in _docstrings(module)]
    # The help() topics are the language reference's text; each topic is its own source document.
    sources += [(f"pydoc_data.topics:{key}", inspect.cleandoc(text)) for key, text in sorted(topics.items())]

    by_module: dict[str, list[str]] = {}
    seen: set[str] = set()
    for group, doc in sources:
        for chunk in prose_chunks(doc):
            if chunk not in seen:
                seen.add(chunk)
                by_module.setdefault(group, []).append(chunk)

    rng = random.Random(f"{seed}-ptx")
    groups = sorted(by_module)
    rng.shuffle(groups)
    total = sum(len(c) for chunks in by_module.values() for c in chunks)
    eval_target = PTX_EVAL_FRACTION * min(total, PTX_TRAIN_CHARS / (1 - PTX_EVAL_FRACTION))
    eval_groups, eval_chars = [], 0
    for group in groups:
        if eval_chars >= eval_target:
            break
        eval_groups.append(group)
        eval_chars += sum(len(c) for c in by_module[group])

    def rows(group_names: list[str], max_chars: float) -> list[dict]:
        texts = [c for g in sorted(group_names) for c in by_module[g]]
        rng.shuffle(texts)
        out, chars = [], 0
        for text in texts:
            if chars + len(text) > max_chars:
                break
            out.append({"text": text})
            chars += len(text)
        return out

    train = rows([g for g in groups if g not in eval_groups], PTX_TRAIN_CHARS)
    return train, rows(eval_groups, eval_target), sorted(eval_groups)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


README_TEMPLATE = """# Default data

Shipped with `instructrl` so that every stage runs offline. Generated by `scripts/make_default_data.py` with seed
{seed} on Python {python_version} (CPython, {platform}); regenerate from the repository root with

```bash
python scripts/make_default_data.py --seed {seed} --out src/instructrl/data/default
```

The generation is deterministic: the same seed and Python minor version ({python_minor}) give byte-identical files.
Only `ptx_*.jsonl` depend on the Python version, because their text comes from the standard library.

All files are JSON lines (UTF-8, one object per line).

| file | rows | bytes | format | source | licence |
|---|---:|---:|---|---|---|
{table}

- **Demonstrations** (`sft_*`): TRL conversational prompt/completion rows. Prompts combine one of {n_topics}
  everyday topics with a task template ("Describe X", "What should a beginner know about X?", ...) and, for most
  prompts, a length instruction ("in about 20 words", "in at most 15 words", "in two sentences", "as three bullet
  points"). Completions are assembled from hand-written sentences about the topic so that they obey the
  instruction; each scores at least {min_score} with `SimulatedLabeler` (mean {mean_score:.3f}). {dropped} candidate
  prompts whose demonstration fell short were skipped during generation.
- **Prompt splits** (`comparison_prompts`, `ppo_prompts`, `eval_prompts`): `{{"prompt": [{{"role": "user", ...}}]}}`
  rows from the same templates. No prompt text occurs in two files (SFT files included). `eval_prompts` uses only
  these {n_heldout} held-out topics, which occur in no other file: {heldout}.
- **Pretraining mix** (`ptx_*`): `{{"text": ...}}` rows of 200-1200 characters of prose from the docstrings of
  {n_modules} standard-library modules and from the `help()` topics in `pydoc_data.topics` (the language
  reference's text as shipped with Python), filtered to paragraphs that read as English prose (no code, doctests or
  parameter lists), deduplicated and shuffled. Whole sources (a top-level package, or one help topic) are held out
  for `ptx_eval`: {ptx_heldout}. The whole standard library holds only about 1.9 MB of docstring and help text,
  most of it code, signatures and parameter lists, so the prose corpus is a few hundred kilobytes.

Licences: the topic sentences and templates were written for this project and are Apache-2.0. The docstring text
is Copyright Python Software Foundation, used under the PSF License Agreement
(https://docs.python.org/3/license.html).
"""

FILE_INFO = {
    "sft_train": ("prompt/completion (conversational)", "written for this project", "Apache-2.0"),
    "sft_eval": ("prompt/completion (conversational)", "written for this project", "Apache-2.0"),
    "comparison_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "ppo_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "eval_prompts": ("prompt (conversational)", "written for this project", "Apache-2.0"),
    "ptx_train": ("text", "Python standard-library docstrings and help topics", "PSF-2.0"),
    "ptx_eval": ("text", "Python standard-library docstrings and help topics", "PSF-2.0"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED, help="Seed for every random choice.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Output folder.")
    args = parser.parse_args(argv)

    splits, stats = make_prompt_splits(args.seed)
    ptx_train, ptx_eval, ptx_heldout = make_ptx(args.seed)
    splits["ptx_train"], splits["ptx_eval"] = ptx_train, ptx_eval

    args.out.mkdir(parents=True, exist_ok=True)
    table = []
    for name, rows in splits.items():
        path = args.out / f"{name}.jsonl"
        write_jsonl(path, rows)
        fmt, source, licence = FILE_INFO[name]
        table.append(f"| `{path.name}` | {len(rows)} | {path.stat().st_size} | {fmt} | {source} | {licence} |")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        print(f"{path}: {len(rows)} rows, {path.stat().st_size} bytes, sha256 {digest}")

    labeler = SimulatedLabeler()
    demos = splits["sft_train"] + splits["sft_eval"]
    scores = [labeler.score(r["prompt"][0]["content"], r["completion"][0]["content"]) for r in demos]
    readme = README_TEMPLATE.format(
        seed=args.seed,
        python_version=".".join(map(str, sys.version_info[:3])),
        python_minor=".".join(map(str, sys.version_info[:2])),
        platform=sys.platform,
        table="\n".join(table),
        n_topics=stats["n_topics"],
        min_score=MIN_DEMO_SCORE,
        mean_score=sum(scores) / len(scores),
        dropped=stats["dropped_demos"],
        n_heldout=stats["n_heldout_topics"],
        heldout=", ".join(stats["heldout_topics"]),
        n_modules=len(PTX_MODULES),
        ptx_heldout=", ".join(f"`{m}`" for m in ptx_heldout),
    )
    (args.out / "README.md").write_text(readme, encoding="utf-8", newline="\n")
    print(
        f"{args.out / 'README.md'}: mean demo score {sum(scores) / len(scores):.3f}, dropped {stats['dropped_demos']}"
    )


if __name__ == "__main__":
    main()
