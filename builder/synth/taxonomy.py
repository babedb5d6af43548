"""The synthetic store's category tree: fixed word lists and the tree a scale uses.

The taxonomy is written out by hand so paths read like a real storefront's
("Home/Kitchen/Cookware"). Every department has level-2 categories, every category has leaves;
each leaf carries the noun used in item titles ("Cookware" → "Pan Set"). A scale uses a prefix of
the departments, categories and leaves; the largest scales split each leaf into 4th-level
variants ("Home/Kitchen/Cookware/Professional") so a million SKUs do not crowd a few hundred leaves.

Leaves of one level-2 category, and the categories of one department, are contiguous in the
order built here; the catalog sorts items by leaf, so every node of the tree is a contiguous range
of catalog rows (the session simulator samples inside such ranges by binary search).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from artifacts.schema import CATEGORY_SEPARATOR

# department: base median price (USD); then indented "Category: Leaf=Title Noun, ...".
_TAXONOMY = """
Home 40
  Kitchen: Cookware=Pan Set, Cutlery=Knife Set, Bakeware=Baking Sheet, Small Appliances=Blender, Coffee & Tea=Coffee Maker, Kitchen Storage=Storage Jars
  Dining: Dinnerware=Dinner Plates, Glassware=Glass Set, Flatware=Flatware Set, Serveware=Serving Bowl, Table Linens=Tablecloth, Drinkware=Mug
  Bedding: Sheets=Sheet Set, Pillows=Pillow, Duvets=Duvet, Blankets=Throw Blanket, Mattress Toppers=Mattress Topper, Bed Frames=Bed Frame
  Bath: Towels=Bath Towel, Bath Mats=Bath Mat, Shower Curtains=Shower Curtain, Bathroom Storage=Bathroom Shelf, Bath Accessories=Soap Dispenser, Bathroom Scales=Bathroom Scale
  Decor: Lighting=Table Lamp, Rugs=Area Rug, Wall Art=Wall Print, Candles=Scented Candle, Mirrors=Wall Mirror, Vases=Vase
Electronics 120
  Phones: Smartphones=Smartphone, Basic Phones=Flip Phone, Refurbished Phones=Refurbished Phone, Smartwatches=Smartwatch, Fitness Trackers=Fitness Tracker, Tablets=Tablet
  Phone Accessories: Cases=Phone Case, Screen Protectors=Screen Protector, Chargers=Charger, Cables=USB-C Cable, Power Banks=Power Bank, Mounts=Phone Mount
  Audio: Headphones=Headphones, Earbuds=Earbuds, Speakers=Bluetooth Speaker, Soundbars=Soundbar, Turntables=Turntable, Microphones=Microphone
  Computers: Laptops=Laptop, Monitors=Monitor, Keyboards=Keyboard, Mice=Mouse, Storage Drives=SSD, Webcams=Webcam
  TV & Video: Televisions=TV, Streaming Devices=Streaming Stick, Projectors=Projector, TV Mounts=TV Wall Mount, Remotes=Universal Remote, Antennas=HD Antenna
Fashion 50
  Women's Clothing: Dresses=Dress, Tops=Blouse, Jeans=Jeans, Skirts=Skirt, Coats=Coat, Sweaters=Sweater
  Men's Clothing: Shirts=Shirt, Trousers=Chinos, Jackets=Jacket, Suits=Suit, Knitwear=Cardigan, T-Shirts=T-Shirt
  Shoes: Sneakers=Sneakers, Boots=Boots, Sandals=Sandals, Loafers=Loafers, Heels=Heels, Slippers=Slippers
  Accessories: Handbags=Handbag, Wallets=Wallet, Belts=Belt, Scarves=Scarf, Sunglasses=Sunglasses, Hats=Hat
  Jewelry & Watches: Watches=Watch, Necklaces=Necklace, Earrings=Earrings, Rings=Ring, Bracelets=Bracelet, Jewelry Boxes=Jewelry Box
Sports 60
  Fitness: Yoga Mats=Yoga Mat, Dumbbells=Dumbbell Set, Resistance Bands=Resistance Band, Exercise Bikes=Exercise Bike, Treadmills=Treadmill, Kettlebells=Kettlebell
  Outdoor Recreation: Tents=Tent, Sleeping Bags=Sleeping Bag, Hiking Backpacks=Hiking Backpack, Camping Stoves=Camp Stove, Headlamps=Headlamp, Trekking Poles=Trekking Poles
  Cycling: Bikes=Bike, Helmets=Bike Helmet, Bike Lights=Bike Light, Bike Locks=Bike Lock, Cycling Apparel=Cycling Jersey, Bike Pumps=Bike Pump
  Team Sports: Soccer=Soccer Ball, Basketball=Basketball, Baseball=Baseball Glove, Tennis=Tennis Racket, Volleyball=Volleyball, Hockey=Hockey Stick
  Water Sports: Swimwear=Swimsuit, Goggles=Swim Goggles, Paddleboards=Paddleboard, Wetsuits=Wetsuit, Snorkel Gear=Snorkel Set, Life Jackets=Life Jacket
Beauty 20
  Skincare: Moisturizers=Moisturizer, Cleansers=Cleanser, Serums=Serum, Sunscreen=Sunscreen, Face Masks=Face Mask, Eye Creams=Eye Cream
  Makeup: Foundation=Foundation, Lipstick=Lipstick, Mascara=Mascara, Eyeshadow=Eyeshadow Palette, Blush=Blush, Makeup Brushes=Brush Set
  Hair Care: Shampoo=Shampoo, Conditioner=Conditioner, Hair Dryers=Hair Dryer, Straighteners=Hair Straightener, Hair Oils=Hair Oil, Styling Products=Styling Gel
  Fragrance: Perfume=Eau de Parfum, Cologne=Cologne, Body Mist=Body Mist, Fragrance Sets=Fragrance Gift Set, Diffusers=Reed Diffuser, Travel Sizes=Travel Spray
  Personal Care: Razors=Razor, Electric Shavers=Electric Shaver, Toothbrushes=Electric Toothbrush, Deodorant=Deodorant, Body Wash=Body Wash, Nail Care=Nail Kit
Toys 25
  Building Toys: Building Sets=Building Set, Magnetic Tiles=Magnetic Tiles, Marble Runs=Marble Run, Wooden Blocks=Block Set, Model Kits=Model Kit, STEM Kits=STEM Kit
  Dolls & Figures: Dolls=Doll, Action Figures=Action Figure, Dollhouses=Dollhouse, Plush=Plush Toy, Playsets=Playset, Puppets=Puppet
  Games & Puzzles: Board Games=Board Game, Card Games=Card Game, Jigsaw Puzzles=Jigsaw Puzzle, Brain Teasers=Puzzle Cube, Party Games=Party Game, Dice Games=Dice Game
  Outdoor Play: Scooters=Scooter, Swings=Swing Set, Water Toys=Water Blaster, Kites=Kite, Sandbox Toys=Sand Toy Set, Ride-Ons=Ride-On Car
  Baby Toys: Rattles=Rattle, Activity Gyms=Activity Gym, Stacking Toys=Stacking Toy, Bath Toys=Bath Toy, Teethers=Teether, Push Toys=Push Walker
Grocery 8
  Pantry: Pasta=Pasta, Rice & Grains=Basmati Rice, Sauces=Pasta Sauce, Oils & Vinegars=Olive Oil, Spices=Spice Blend, Baking Supplies=Baking Mix
  Snacks: Chips=Chips, Cookies=Cookies, Nuts=Mixed Nuts, Chocolate=Chocolate Bar, Crackers=Crackers, Snack Bars=Protein Bar
  Beverages: Coffee=Ground Coffee, Tea=Tea, Juice=Juice, Sparkling Water=Sparkling Water, Energy Drinks=Energy Drink, Soda=Soda
  Breakfast: Cereal=Cereal, Oatmeal=Oatmeal, Granola=Granola, Pancake Mix=Pancake Mix, Spreads=Peanut Butter, Syrups=Maple Syrup
  Specialty Foods: Organic=Organic Blend, Gluten-Free=Gluten-Free Bread Mix, Vegan=Vegan Jerky, International=Curry Paste, Gourmet Gifts=Gift Basket, Honey & Sweeteners=Honey
Garden 35
  Plants & Seeds: Seeds=Seed Pack, Bulbs=Flower Bulbs, Houseplants=Houseplant, Succulents=Succulent, Herbs=Herb Kit, Shrubs=Shrub
  Garden Tools: Shovels=Shovel, Pruners=Pruning Shears, Rakes=Rake, Hoses=Garden Hose, Wheelbarrows=Wheelbarrow, Garden Gloves=Garden Gloves
  Lawn Care: Lawn Mowers=Lawn Mower, Trimmers=String Trimmer, Leaf Blowers=Leaf Blower, Fertilizer=Lawn Fertilizer, Sprinklers=Sprinkler, Grass Seed=Grass Seed
  Patio: Patio Furniture=Patio Chair, Grills=Gas Grill, Fire Pits=Fire Pit, Umbrellas=Patio Umbrella, Outdoor Lighting=String Lights, Hammocks=Hammock
  Planters: Pots=Planter Pot, Raised Beds=Raised Bed, Hanging Baskets=Hanging Basket, Window Boxes=Window Box, Potting Soil=Potting Mix, Plant Stands=Plant Stand
Automotive 30
  Car Care: Car Wax=Car Wax, Car Wash=Car Wash Soap, Microfiber Cloths=Microfiber Cloth, Interior Cleaners=Interior Cleaner, Tire Shine=Tire Shine, Detailing Kits=Detailing Kit
  Car Electronics: Dash Cams=Dash Cam, Car Chargers=Car Charger, GPS Units=GPS Navigator, Car Stereos=Car Stereo, Backup Cameras=Backup Camera, Radar Detectors=Radar Detector
  Interior Accessories: Seat Covers=Seat Cover, Floor Mats=Floor Mats, Steering Wheel Covers=Steering Wheel Cover, Organizers=Trunk Organizer, Sunshades=Windshield Sunshade, Air Fresheners=Air Freshener
  Tools & Equipment: Jump Starters=Jump Starter, Tire Inflators=Tire Inflator, Jacks=Floor Jack, Battery Chargers=Battery Charger, Code Readers=OBD2 Scanner, Tow Straps=Tow Strap
  Parts: Wiper Blades=Wiper Blades, Headlight Bulbs=Headlight Bulb, Air Filters=Air Filter, Brake Pads=Brake Pads, Spark Plugs=Spark Plugs, Motor Oil=Motor Oil
Books 15
  Fiction: Mystery=Mystery Novel, Science Fiction=Sci-Fi Novel, Fantasy=Fantasy Novel, Romance=Romance Novel, Literary Fiction=Novel, Thrillers=Thriller
  Nonfiction: Biography=Biography, History=History Book, Science=Science Book, Business=Business Book, Self-Help=Self-Help Book, Travel Guides=Travel Guide
  Children's Books: Picture Books=Picture Book, Early Readers=Early Reader, Middle Grade=Middle Grade Novel, Activity Books=Activity Book, Board Books=Board Book, Young Adult=YA Novel
  Cookbooks: Baking Books=Baking Cookbook, Vegetarian=Vegetarian Cookbook, Quick Meals=Weeknight Cookbook, World Cuisine=World Cookbook, Healthy Eating=Healthy Cookbook, Grilling Books=Grilling Cookbook
  Comics: Graphic Novels=Graphic Novel, Manga=Manga Volume, Superheroes=Comic Collection, Comic Strips=Comic Strip Book, Art Books=Art Book, Collector Editions=Collector's Edition
Office 20
  Office Supplies: Notebooks=Notebook, Pens=Pen Set, Sticky Notes=Sticky Notes, Binders=Binder, Staplers=Stapler, Labels=Label Roll
  Office Furniture: Desks=Desk, Office Chairs=Office Chair, Bookcases=Bookcase, Filing Cabinets=Filing Cabinet, Desk Lamps=Desk Lamp, Monitor Stands=Monitor Stand
  Printers & Ink: Printers=Printer, Ink Cartridges=Ink Cartridge, Toner=Toner Cartridge, Printer Paper=Printer Paper, Label Makers=Label Maker, Scanners=Document Scanner
  School Supplies: Backpacks=School Backpack, Pencil Cases=Pencil Case, Calculators=Calculator, Art Supplies=Colored Pencils, Lunch Boxes=Lunch Box, Planners=Planner
  Desk Accessories: Desk Organizers=Desk Organizer, Mouse Pads=Mouse Pad, Whiteboards=Whiteboard, Clocks=Desk Clock, Cable Management=Cable Organizer, Paper Trays=Paper Tray
Pets 20
  Dog Supplies: Dog Food=Dog Food, Dog Treats=Dog Treats, Dog Beds=Dog Bed, Leashes=Leash, Dog Toys=Chew Toy, Dog Collars=Dog Collar
  Cat Supplies: Cat Food=Cat Food, Cat Litter=Cat Litter, Scratchers=Cat Scratcher, Cat Toys=Cat Toy, Cat Beds=Cat Bed, Litter Boxes=Litter Box
  Fish & Aquatic: Aquariums=Aquarium, Filters=Aquarium Filter, Fish Food=Fish Food, Aquarium Decor=Aquarium Ornament, Heaters=Aquarium Heater, Water Care=Water Conditioner
  Small Animals: Cages=Small Animal Cage, Bedding=Small Animal Bedding, Hay=Timothy Hay, Small Animal Food=Pellet Food, Hideouts=Hideout, Water Bottles=Water Bottle
  Pet Health: Flea & Tick=Flea Treatment, Supplements=Pet Supplement, Grooming=Grooming Brush, Dental Care=Dental Chews, Pet Shampoo=Pet Shampoo, First Aid=Pet First Aid Kit
Baby 30
  Nursery: Cribs=Crib, Crib Mattresses=Crib Mattress, Changing Tables=Changing Table, Baby Monitors=Baby Monitor, Nursery Decor=Mobile, Night Lights=Night Light
  Feeding: Bottles=Baby Bottle, Breast Pumps=Breast Pump, High Chairs=High Chair, Bibs=Bib Set, Baby Food=Baby Food Pouch, Sippy Cups=Sippy Cup
  Diapering: Diapers=Diapers, Wipes=Baby Wipes, Diaper Bags=Diaper Bag, Diaper Pails=Diaper Pail, Changing Pads=Changing Pad, Diaper Cream=Diaper Cream
  Strollers & Car Seats: Strollers=Stroller, Car Seats=Car Seat, Booster Seats=Booster Seat, Baby Carriers=Baby Carrier, Travel Systems=Travel System, Stroller Accessories=Stroller Organizer
  Baby Clothing: Bodysuits=Bodysuit, Sleepwear=Sleep Sack, Baby Shoes=Baby Shoes, Baby Hats=Baby Hat, Outfit Sets=Outfit Set, Socks=Baby Socks
Tools 60
  Power Tools: Drills=Cordless Drill, Saws=Circular Saw, Sanders=Orbital Sander, Impact Drivers=Impact Driver, Rotary Tools=Rotary Tool, Tool Batteries=Tool Battery
  Hand Tools: Screwdrivers=Screwdriver Set, Wrenches=Wrench Set, Hammers=Hammer, Pliers=Pliers, Tape Measures=Tape Measure, Utility Knives=Utility Knife
  Tool Storage: Tool Boxes=Tool Box, Tool Bags=Tool Bag, Workbenches=Workbench, Pegboards=Pegboard, Tool Chests=Tool Chest, Parts Organizers=Parts Organizer
  Hardware: Screws=Screw Assortment, Anchors=Wall Anchors, Hinges=Hinge Set, Hooks=Utility Hooks, Fasteners=Fastener Kit, Door Hardware=Door Handle
  Safety: Work Gloves=Work Gloves, Safety Glasses=Safety Glasses, Ear Protection=Ear Muffs, Respirators=Respirator, Knee Pads=Knee Pads, Hard Hats=Hard Hat
"""

# A level-2 category's natural cross-sell partner ("Phones" → "Phone Accessories"). Leaves of the
# partner are the first complement of the category's leaves; a sibling leaf is the second.
_CATEGORY_PARTNER: dict[str, str] = {
    "Home/Kitchen": "Home/Dining",
    "Home/Dining": "Home/Kitchen",
    "Home/Bedding": "Home/Bath",
    "Home/Bath": "Home/Bedding",
    "Home/Decor": "Home/Bedding",
    "Electronics/Phones": "Electronics/Phone Accessories",
    "Electronics/Phone Accessories": "Electronics/Phones",
    "Electronics/Audio": "Electronics/TV & Video",
    "Electronics/Computers": "Electronics/Phone Accessories",
    "Electronics/TV & Video": "Electronics/Audio",
    "Fashion/Women's Clothing": "Fashion/Shoes",
    "Fashion/Men's Clothing": "Fashion/Accessories",
    "Fashion/Shoes": "Fashion/Accessories",
    "Fashion/Accessories": "Fashion/Jewelry & Watches",
    "Fashion/Jewelry & Watches": "Fashion/Accessories",
    "Sports/Fitness": "Sports/Water Sports",
    "Sports/Outdoor Recreation": "Sports/Cycling",
    "Sports/Cycling": "Sports/Outdoor Recreation",
    "Sports/Team Sports": "Sports/Fitness",
    "Sports/Water Sports": "Sports/Outdoor Recreation",
    "Beauty/Skincare": "Beauty/Makeup",
    "Beauty/Makeup": "Beauty/Skincare",
    "Beauty/Hair Care": "Beauty/Personal Care",
    "Beauty/Fragrance": "Beauty/Personal Care",
    "Beauty/Personal Care": "Beauty/Hair Care",
    "Toys/Building Toys": "Toys/Games & Puzzles",
    "Toys/Dolls & Figures": "Toys/Building Toys",
    "Toys/Games & Puzzles": "Toys/Building Toys",
    "Toys/Outdoor Play": "Toys/Games & Puzzles",
    "Toys/Baby Toys": "Toys/Dolls & Figures",
    "Grocery/Pantry": "Grocery/Snacks",
    "Grocery/Snacks": "Grocery/Beverages",
    "Grocery/Beverages": "Grocery/Snacks",
    "Grocery/Breakfast": "Grocery/Beverages",
    "Grocery/Specialty Foods": "Grocery/Pantry",
    "Garden/Plants & Seeds": "Garden/Planters",
    "Garden/Garden Tools": "Garden/Lawn Care",
    "Garden/Lawn Care": "Garden/Garden Tools",
    "Garden/Patio": "Garden/Planters",
    "Garden/Planters": "Garden/Plants & Seeds",
    "Automotive/Car Care": "Automotive/Interior Accessories",
    "Automotive/Car Electronics": "Automotive/Interior Accessories",
    "Automotive/Interior Accessories": "Automotive/Car Care",
    "Automotive/Tools & Equipment": "Automotive/Parts",
    "Automotive/Parts": "Automotive/Tools & Equipment",
    "Books/Fiction": "Books/Nonfiction",
    "Books/Nonfiction": "Books/Fiction",
    "Books/Children's Books": "Books/Comics",
    "Books/Cookbooks": "Books/Nonfiction",
    "Books/Comics": "Books/Fiction",
    "Office/Office Supplies": "Office/Desk Accessories",
    "Office/Office Furniture": "Office/Desk Accessories",
    "Office/Printers & Ink": "Office/Office Supplies",
    "Office/School Supplies": "Office/Office Supplies",
    "Office/Desk Accessories": "Office/Office Supplies",
    "Pets/Dog Supplies": "Pets/Pet Health",
    "Pets/Cat Supplies": "Pets/Pet Health",
    "Pets/Fish & Aquatic": "Pets/Small Animals",
    "Pets/Small Animals": "Pets/Pet Health",
    "Pets/Pet Health": "Pets/Dog Supplies",
    "Baby/Nursery": "Baby/Diapering",
    "Baby/Feeding": "Baby/Diapering",
    "Baby/Diapering": "Baby/Feeding",
    "Baby/Strollers & Car Seats": "Baby/Nursery",
    "Baby/Baby Clothing": "Baby/Nursery",
    "Tools/Power Tools": "Tools/Tool Storage",
    "Tools/Hand Tools": "Tools/Tool Storage",
    "Tools/Tool Storage": "Tools/Hand Tools",
    "Tools/Hardware": "Tools/Hand Tools",
    "Tools/Safety": "Tools/Power Tools",
}

# 4th-level variants for scales with `leaf_variants > 1`.
VARIANTS: tuple[str, ...] = (
    "Everyday",
    "Premium",
    "Compact",
    "Professional",
    "Eco",
    "Travel",
    "Value Packs",
    "Limited Edition",
)

# Style adjectives: the middle word of titles; each is a direction in the latent space.
STYLES: tuple[str, ...] = (
    "Classic",
    "Modern",
    "Rustic",
    "Minimalist",
    "Vintage",
    "Sport",
    "Eco",
    "Pro",
    "Deluxe",
    "Essential",
    "Urban",
    "Nordic",
    "Compact",
    "Premium",
    "Lightweight",
    "Heritage",
    "Bold",
    "Soft",
    "Smart",
    "Organic",
    "Retro",
    "Studio",
    "Explorer",
    "Signature",
)


@dataclass(frozen=True)
class _Department:
    name: str
    base_price: float
    categories: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (name, ((leaf, noun), ...))


def _parse(text: str) -> tuple[_Department, ...]:
    departments: list[_Department] = []
    name, price = "", 0.0
    cats: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            if name:
                departments.append(_Department(name, price, tuple(cats)))
            name, _, price_text = line.rpartition(" ")
            price, cats = float(price_text), []
            continue
        cat_name, _, leaves_text = line.strip().partition(": ")
        leaves = tuple((leaf, noun) for leaf, _, noun in (item.partition("=") for item in leaves_text.split(", ")))
        cats.append((cat_name, leaves))
    departments.append(_Department(name, price, tuple(cats)))
    return tuple(departments)


DEPARTMENTS: tuple[_Department, ...] = _parse(_TAXONOMY)
MAX_DEPARTMENTS = len(DEPARTMENTS)
MAX_CATEGORIES = min(len(d.categories) for d in DEPARTMENTS)
MAX_LEAVES = min(len(leaves) for d in DEPARTMENTS for _, leaves in d.categories)


@dataclass(frozen=True)
class Tree:
    """The category tree a scale uses, flattened to its leaves (the nodes items point at).

    Leaves are ordered department-major, so a department's leaves, and a level-2 category's
    leaves, are contiguous. `category_start[c]:category_start[c + 1]` are the leaves of level-2
    category `c`; `department_start` likewise over categories.
    """

    leaf_path: tuple[str, ...]  # full '/'-joined path, root first, 3 or 4 levels
    leaf_noun: tuple[str, ...]  # title noun
    leaf_category: np.ndarray  # int32 [n_leaves]: level-2 category index
    leaf_department: np.ndarray  # int32 [n_leaves]: department index
    leaf_base_price: np.ndarray  # float64 [n_leaves]: the department's base median price
    category_path: tuple[str, ...]  # "Department/Category"
    category_start: np.ndarray  # int32 [n_categories + 1]: leaf range of each category
    department_name: tuple[str, ...]
    leaf_complements: np.ndarray  # int32 [n_leaves, 2]: complementary leaves, -1 = none

    @property
    def n_leaves(self) -> int:
        return len(self.leaf_path)


def build_tree(
    departments: int,
    categories_per_department: int,
    leaves_per_category: int,
    leaf_variants: int,
    rng: np.random.Generator,
) -> Tree:
    """The first `departments` departments, each cut to its first categories and leaves.

    Complements (1 or 2 per leaf): a leaf of the category's partner category when the scale
    includes it (else of another category of the same department, else any other leaf), and, for
    about half the leaves, a sibling leaf. A variant's complements are variants of the same kind.
    """
    if not 1 <= departments <= MAX_DEPARTMENTS:
        raise ValueError(f"departments must be in [1, {MAX_DEPARTMENTS}], got {departments}")
    if not 1 <= categories_per_department <= MAX_CATEGORIES:
        raise ValueError(f"categories_per_department must be in [1, {MAX_CATEGORIES}], got {categories_per_department}")
    if not 1 <= leaves_per_category <= MAX_LEAVES:
        raise ValueError(f"leaves_per_category must be in [1, {MAX_LEAVES}], got {leaves_per_category}")
    if not 1 <= leaf_variants <= len(VARIANTS):
        raise ValueError(f"leaf_variants must be in [1, {len(VARIANTS)}], got {leaf_variants}")
    sep = CATEGORY_SEPARATOR
    paths: list[str] = []
    nouns: list[str] = []
    leaf_cat: list[int] = []
    leaf_dep: list[int] = []
    leaf_price: list[float] = []
    cat_paths: list[str] = []
    cat_start = [0]
    for d, dep in enumerate(DEPARTMENTS[:departments]):
        for cat_name, leaves in dep.categories[:categories_per_department]:
            cat_paths.append(dep.name + sep + cat_name)
            for leaf_name, noun in leaves[:leaves_per_category]:
                base = dep.name + sep + cat_name + sep + leaf_name
                for v in range(leaf_variants):
                    paths.append(base if leaf_variants == 1 else base + sep + VARIANTS[v])
                    nouns.append(noun)
                    leaf_cat.append(len(cat_paths) - 1)
                    leaf_dep.append(d)
                    leaf_price.append(dep.base_price)
            cat_start.append(len(paths))
    n_leaves = len(paths)
    leaf_category = np.asarray(leaf_cat, dtype=np.int32)
    leaf_department = np.asarray(leaf_dep, dtype=np.int32)
    category_start = np.asarray(cat_start, dtype=np.int32)
    cat_index = {p: i for i, p in enumerate(cat_paths)}

    complements = np.full((n_leaves, 2), -1, dtype=np.int32)
    for leaf in range(n_leaves):
        c = int(leaf_category[leaf])
        variant = leaf % leaf_variants
        partner = cat_index.get(_CATEGORY_PARTNER.get(cat_paths[c], ""), -1)
        if partner < 0 or partner == c:
            same_dep = [k for k in range(len(cat_paths)) if k != c and leaf_department[category_start[k]] == leaf_department[leaf]]
            partner = int(rng.choice(same_dep)) if same_dep else -1
        if partner >= 0:
            first = int(category_start[partner]) + int(rng.integers(leaves_per_category)) * leaf_variants + variant
        else:
            others = np.flatnonzero(leaf_category != c)
            first = int(rng.choice(others)) if len(others) else -1
        complements[leaf, 0] = first
        if leaves_per_category > 1 and rng.random() < 0.5:
            own = (leaf - int(category_start[c])) // leaf_variants
            sib = int(rng.integers(leaves_per_category - 1))
            sib += sib >= own
            complements[leaf, 1] = int(category_start[c]) + sib * leaf_variants + variant
        if complements[leaf, 0] < 0 and complements[leaf, 1] >= 0:
            complements[leaf] = complements[leaf, ::-1].copy()
    return Tree(
        leaf_path=tuple(paths),
        leaf_noun=tuple(nouns),
        leaf_category=leaf_category,
        leaf_department=leaf_department,
        leaf_base_price=np.asarray(leaf_price, dtype=np.float64),
        category_path=tuple(cat_paths),
        category_start=category_start,
        department_name=tuple(d.name for d in DEPARTMENTS[:departments]),
        leaf_complements=complements,
    )
